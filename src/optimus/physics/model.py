r"""The simulated humanoid: MuJoCo MJX model, PD control and a differentiable window rollout.

The model is the humanoid that ships inside the ``mujoco-mjx`` wheel
(``mujoco/mjx/test_data/humanoid/humanoid.xml``): a free root joint (unactuated: no residual
forces) and 21 hinge joints, four foot–floor contact pairs, ``dt = 0.005 s`` and
``iterations=1`` so that reverse-mode gradients flow through the constraint solver.

Joint torques come from PD controllers with smooth saturation,

.. math::

    \tau_j = \tau^{\max}_j \tanh\!\Big(\frac{k_{p,j}(q^*_j - q_j)}{\tau^{\max}_j}\Big)
             - k_{d,j}\dot q_j ,

with :math:`\tau^{\max}_j = 1.5\,g_j` (:math:`g_j` the gear of the joint's motor in the XML),
:math:`k_{p,j} = \min(10 g_j, I_j \omega^2)` with :math:`I_j` the diagonal of the joint-space
inertia at the standing pose and :math:`\omega = 70` rad/s (so that the explicit stiffness
stays stable at ``dt = 5 ms`` on the light foot and hand links), and critical damping
:math:`k_{d,j} = 2\sqrt{k_{p,j} I_j}`. The proportional part is applied as a generalised
force (``qfrc_applied``) on the hinge degrees of freedom; the damping part is added to the
joints' ``dof_damping`` and integrated implicitly (the model's ``eulerdamp`` flag is turned
back on), which is what keeps stiff PD control stable. The six root degrees of freedom get no
force.

:func:`rollout` simulates one window: ``n_frames`` observation frames at 50 Hz, each
``SUBSTEPS = 4`` physics steps, with a per-step PD-target array, and returns the final state
and the 15 body keypoints (world frame, metres) after every frame. The model's arrays are an
argument (traced), so the perturbed bodies of the mismatch split share the compilation.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

N_JOINTS = 21
NQ = 7 + N_JOINTS  # free root (pos 3 + quat 4) + hinges
NV = 6 + N_JOINTS
DT = 0.005
SUBSTEPS = 4  # physics steps per 50 Hz observation frame
FRAME_DT = DT * SUBSTEPS
KP_PER_GEAR = 10.0  # kp <= KP_PER_GEAR * gear  [N m / rad]
OMEGA_MAX = 70.0  # kp <= I * OMEGA_MAX**2 (joint-space inertia I): stable at dt = 5 ms
SATURATION = 1.5  # |tau| < SATURATION * gear

#: the 15 keypoints: body origins (a body's origin is the joint that attaches it)
KEYPOINT_BODIES: tuple[str, ...] = (
    "head",
    "torso",
    "pelvis",
    "thigh_right",  # right hip
    "thigh_left",
    "shin_right",  # right knee
    "shin_left",
    "foot_right",  # right ankle
    "foot_left",
    "upper_arm_right",  # right shoulder
    "upper_arm_left",
    "lower_arm_right",  # right elbow
    "lower_arm_left",
    "hand_right",  # right wrist
    "hand_left",
)
N_KEYPOINTS = len(KEYPOINT_BODIES)
PELVIS = KEYPOINT_BODIES.index("pelvis")
#: bone list (pairs of keypoint indices) for drawing the skeleton
BONES: tuple[tuple[int, int], ...] = (
    (0, 1),
    (1, 2),
    (2, 3),
    (2, 4),
    (3, 5),
    (4, 6),
    (5, 7),
    (6, 8),
    (1, 9),
    (1, 10),
    (9, 11),
    (10, 12),
    (11, 13),
    (12, 14),
)


def humanoid_xml() -> str:
    """The humanoid XML text, read from inside the installed ``mujoco-mjx`` package."""
    path = importlib.resources.files("mujoco.mjx").joinpath("test_data/humanoid/humanoid.xml")
    return path.read_text()


@dataclass(frozen=True)
class Mismatch:
    """Perturbation of the body for the "model mismatch" split.

    ``mass``: factor on all body masses and inertias; ``leg``/``arm``: factor on the lengths of
    thigh/shin and upper/lower arm segments (child-body offsets);
    ``friction``: factor on the sliding friction of all geoms and contact pairs. (Segment lengths
    move the joints, hence the keypoints and the feet; the capsule shapes are kept, which keeps
    the compiled collision structure of the nominal model.)
    """

    mass: float = 1.0
    leg: float = 1.0
    arm: float = 1.0
    friction: float = 1.0

    def as_array(self) -> np.ndarray:
        return np.array([self.mass, self.leg, self.arm, self.friction], np.float64)


NOMINAL = Mismatch()


def _raw_model():
    import mujoco

    return mujoco.MjModel.from_xml_string(humanoid_xml())


@functools.lru_cache(maxsize=1)
def joint_inertia() -> np.ndarray:
    """Diagonal of the joint-space inertia of the 21 hinges at the nominal standing pose."""
    import mujoco

    m = _raw_model()
    d = mujoco.MjData(m)
    d.qpos[:] = m.qpos0
    mujoco.mj_forward(m, d)
    full = np.zeros((m.nv, m.nv))
    mujoco.mj_fullM(m, d, full)
    return np.diag(full)[6:].copy()


def joint_gears() -> np.ndarray:
    """Motor gear of each hinge DOF, in qvel order (N m)."""
    m = _raw_model()
    gear = np.zeros(N_JOINTS)
    for a in range(m.nu):
        jnt = m.actuator_trnid[a, 0]
        gear[m.jnt_dofadr[jnt] - 6] = m.actuator_gear[a, 0]
    return gear


def pd_gains() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(kp, kd, tau_max)`` per hinge (see the module docstring); the same controller is used
    for every body (also the perturbed ones of the mismatch split)."""
    gear = joint_gears()
    inertia = joint_inertia()
    kp = np.minimum(KP_PER_GEAR * gear, inertia * OMEGA_MAX**2)
    kd = 2.0 * np.sqrt(kp * inertia)
    return kp, kd, SATURATION * gear


@functools.lru_cache(maxsize=16)
def mj_model(mismatch: Mismatch = NOMINAL):
    """The MuJoCo ``MjModel`` (host side) with PD damping, optionally perturbed."""
    import mujoco

    m = _raw_model()
    m.opt.disableflags &= ~int(mujoco.mjtDisableBit.mjDSBL_EULERDAMP)
    m.dof_damping[6:] += pd_gains()[1]
    if mismatch != NOMINAL:
        m.body_mass[:] *= mismatch.mass
        m.body_inertia[:] *= mismatch.mass
        m.geom_friction[:, 0] *= mismatch.friction
        m.pair_friction[:, :2] *= mismatch.friction
        segs = (
            (("shin_right", "foot_right", "shin_left", "foot_left"), mismatch.leg),
            (("lower_arm_right", "hand_right", "lower_arm_left", "hand_left"), mismatch.arm),
        )
        for children, factor in segs:
            for name in children:
                b = m.body(name).id
                # offset from the parent = the parent segment's length (the capsules keep
                # their shape: only the feet collide, and they move with the joints)
                m.body_pos[b] *= factor
        mujoco.mj_setConst(m, mujoco.MjData(m))
    return m


@functools.lru_cache(maxsize=1)
def _nominal_split():
    """``(treedef, static)``: the tree structure of the MJX model's JAX arrays and its static
    part (NumPy index arrays, options), both of the nominal body."""
    from mujoco import mjx

    model = mjx.put_model(mj_model(NOMINAL))
    dyn, static = eqx.partition(model, _is_jax_array)
    return jax.tree_util.tree_structure(dyn), static


def _is_jax_array(x) -> bool:
    return isinstance(x, jax.Array)


def model_arrays(mismatch: Mismatch = NOMINAL) -> tuple[jax.Array, ...]:
    """The MJX model of a body as a flat tuple of JAX arrays (traced under jit). The static
    part (NumPy index arrays, options) is the nominal body's and stays outside, so a perturbed
    body reuses the compiled simulation and objectives holding these arrays are hashable."""
    from mujoco import mjx

    model = mjx.put_model(mj_model(mismatch))
    dyn, _ = eqx.partition(model, _is_jax_array)
    leaves, treedef = jax.tree_util.tree_flatten(dyn)
    if treedef != _nominal_split()[0]:
        raise ValueError("the perturbed model changes the model's structure")
    return tuple(leaves)


def full_model(arrays):
    """Rebuild the MJX model from :func:`model_arrays`."""
    treedef, static = _nominal_split()
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, list(arrays)), static)


def keypoint_ids() -> np.ndarray:
    m = _raw_model()
    return np.array([m.body(name).id for name in KEYPOINT_BODIES], np.int32)


def joint_ranges() -> np.ndarray:
    """``(21, 2)`` hinge limits in radians, qpos order."""
    return np.asarray(_raw_model().jnt_range[1:], np.float64)


def initial_state(mismatch: Mismatch = NOMINAL) -> tuple[np.ndarray, np.ndarray]:
    """Default standing configuration ``(qpos, qvel)``: the XML's ``qpos0`` with the body
    lowered so that the feet touch the floor."""
    import mujoco

    m = mj_model(mismatch)
    qpos = np.array(m.qpos0, np.float64)
    d = mujoco.MjData(m)
    d.qpos[:] = qpos
    mujoco.mj_kinematics(m, d)
    lowest = min(
        d.geom_xpos[m.geom(n).id][2] - m.geom_size[m.geom(n).id][0]
        for n in ("foot1_right", "foot2_right", "foot1_left", "foot2_left")
    )
    qpos[2] -= lowest - 0.002
    return qpos, np.zeros(m.nv)


def rollout(model_arrays, qpos: jax.Array, qvel: jax.Array, targets: jax.Array):
    """Simulate ``targets.shape[0]`` physics steps (a multiple of ``SUBSTEPS``) from
    ``(qpos, qvel)`` with PD targets ``targets`` ``(steps, 21)``.

    Returns ``(qpos_end, qvel_end, keypoints)``, ``keypoints`` ``(steps // SUBSTEPS, 15, 3)``
    the world positions after every 50 Hz frame. Pure JAX (jit / grad through it).
    """
    from mujoco import mjx

    model = full_model(model_arrays)
    kp, _, tau_max = (jnp.asarray(a, qpos.dtype) for a in pd_gains())
    ids = jnp.asarray(keypoint_ids())
    n_frames = targets.shape[0] // SUBSTEPS
    tg = targets.reshape(n_frames, SUBSTEPS, N_JOINTS)

    def step(d, target):
        tau = tau_max * jnp.tanh(kp * (target - d.qpos[7:]) / tau_max)
        frc = jnp.zeros(NV, d.qvel.dtype).at[6:].set(tau)
        return mjx.step(model, d.replace(qfrc_applied=frc)), None

    def frame(d, tgt):
        d, _ = jax.lax.scan(step, d, tgt)
        return d, mjx.kinematics(model, d).xpos[ids]

    d0 = mjx.make_data(model).replace(qpos=qpos, qvel=qvel)
    d, kps = jax.lax.scan(frame, d0, tg)
    return d.qpos, d.qvel, kps
