#!/usr/bin/env python
"""Write a model's weights under variants of its update rule, for ``--params-dir``.

    .venv/bin/python scripts/rule_variants.py optimus-humanoid --out runs/variants/all \\
        --variant w10:accept_window=10 --variant nonmono:monotone=false

Each ``--variant SUFFIX:FIELD=VALUE[,FIELD=VALUE...]`` writes ``OUT/<model>-<SUFFIX>.npz``
(+ model card): the same meta-parameters with those update-rule fields of the network config
changed (``optimus.nets.with_config``; only fields of ``optimus.meta.train.RULE_FIELDS``, so
the parameters keep their meaning). ``optimus bench physics --params-dir OUT --methods
<model>-<SUFFIX>,...`` and ``optimus bench --params-dir`` then run them beside the shipped
model. The card records the source model and the change.

One key that is no config field: ``step_factor=F`` multiplies the Adam-like term's global
step exp(sigma) by ``F`` (adds log F to the bias of the global head's sigma output, which
``outer.init_log_step`` sets for a fine-tune), e.g.
``--variant s15:step_factor=1.5``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="shipped model name or .npz file")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", action="append", required=True, metavar="SUFFIX:FIELD=VALUE,...")
    args = p.parse_args(argv)

    import equinox as eqx

    import optimus
    from optimus.meta.train import RULE_FIELDS
    from optimus.nets import with_config

    shipped = args.model in optimus.pretrained.available()
    net = optimus.load_pretrained(args.model) if shipped else optimus.load_params(args.model)[0]
    stem = args.model if shipped else Path(args.model).stem
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
            if key not in RULE_FIELDS:
                raise SystemExit(f"{key!r} is not an update-rule field ({', '.join(RULE_FIELDS)})")
            try:  # numbers and booleans; anything else is a string ("interp", "rescale")
                fields[key] = json.loads(value)
            except json.JSONDecodeError:
                fields[key] = value
        variant = with_config(net, dataclasses.replace(net.config, **fields))
        change = dict(fields)
        if factor is not None:
            if not hasattr(variant, "glob_head"):
                raise SystemExit("step_factor needs an Optimus network (kind = 'optimus')")
            bias = variant.glob_head.bias.at[0].add(math.log(factor))
            variant = eqx.tree_at(lambda n: n.glob_head.bias, variant, bias)
            change["step_factor"] = factor
        path = optimus.save_params(
            out / f"{stem}-{suffix}.npz",
            variant,
            name=f"{stem}-{suffix}",
            source=args.model,
            rule_change=change,
        )
        print(f"wrote {path}: {change}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
