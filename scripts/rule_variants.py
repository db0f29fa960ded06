#!/usr/bin/env python
"""Write a model's weights under variants of its update rule, for ``--params-dir``.

    .venv/bin/python scripts/rule_variants.py optimus-humanoid --out runs/variants/all \\
        --variant w10:accept_window=10 --variant nonmono:monotone=false

Each ``--variant SUFFIX:FIELD=VALUE[,FIELD=VALUE...]`` writes ``OUT/<model>-<SUFFIX>.npz``
(+ model card): the same meta-parameters with those update-rule fields of the network config
changed (``optimus.nets.with_rule``; only fields of ``optimus.nets.optimus.RULE_FIELDS``, so
the parameters keep their meaning). ``optimus bench physics --params-dir OUT --methods
<model>-<SUFFIX>,...`` and ``optimus bench --params-dir`` then run them beside the shipped
model. The card keeps the source's model card (training config, steps, wall time, commit)
and records the source and the change (``rule_change``, merged with any earlier one; a
``--note`` is appended to an earlier ``rule_change_note``). An
empty suffix (``--variant :probe=0.1``) writes ``OUT/<model>.npz`` under the source's own
name: how ``scripts/train_pretrained.sh`` applies a shipped rule change to freshly trained
weights.

One key that is no config field: ``step_factor=F`` multiplies the Adam-like term's global
step exp(sigma) by ``F`` (adds log F to the bias of the global head's sigma output, which
``outer.init_log_step`` sets for a fine-tune), e.g.
``--variant s15:step_factor=1.5``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="shipped model name or .npz file")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", action="append", required=True, metavar="SUFFIX:FIELD=VALUE,...")
    p.add_argument("--note", default="", help="why the rule was changed (kept in the card)")
    args = p.parse_args(argv)

    import equinox as eqx

    import optimus
    from optimus.nets import with_rule

    shipped = args.model in optimus.pretrained.available()
    if shipped:
        net, card = optimus.load_pretrained(args.model), optimus.pretrained.model_card(args.model)
    else:
        net, card = optimus.load_params(args.model)
    stem = args.model if shipped else Path(args.model).stem
    # the card's training fields; save_params writes format, config and sha256 afresh
    drop = ("format", "format_version", "config", "sha256")
    kept = {k: v for k, v in card.items() if k not in drop}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for spec in args.variant:
        suffix, _, changes = spec.partition(":")
        fields = {}
        factor = None
        for item in filter(None, changes.split(",")):
            key, _, value = item.partition("=")
            if key == "step_factor":
                factor = float(value)
                if not factor > 0:
                    raise SystemExit(f"step_factor must be > 0, got {value}")
                continue
            try:  # numbers and booleans; anything else is a string ("interp", "rescale")
                fields[key] = json.loads(value)
            except json.JSONDecodeError:
                fields[key] = value
        try:
            variant = with_rule(net, **fields)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        change = dict(fields)
        if factor is not None:
            if not hasattr(variant, "glob_head"):
                raise SystemExit("step_factor needs an Optimus network (kind = 'optimus')")
            bias = variant.glob_head.bias.at[0].add(math.log(factor))
            variant = eqx.tree_at(lambda n: n.glob_head.bias, variant, bias)
            change["step_factor"] = factor
        name = f"{stem}-{suffix}" if suffix else stem
        meta = {
            **kept,
            "name": name,
            "source": args.model if suffix else card.get("source", stem),
            "rule_change": {**card.get("rule_change", {}), **change},
        }
        earlier = card.get("rule_change_note", "")
        if args.note:  # an earlier change keeps its note; the new one is appended
            fresh = not earlier or args.note in earlier
            meta["rule_change_note"] = args.note if fresh else f"{earlier} Then: {args.note}"
        path = optimus.save_params(out / f"{name}.npz", variant, **meta)
        print(f"wrote {path}: {change}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
