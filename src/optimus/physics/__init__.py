"""Physics-based reconstruction of articulated human motion (stand-in for the paper's task).

A MuJoCo MJX humanoid (free unactuated root, 21 PD-controlled hinges, foot contacts) is
simulated differentiably over short windows; the unknowns are PD-target offsets at K keyframes
per window, fitted to noisy 2D keypoints from a pinhole camera and a noisy 3D kinematic
estimate. Modules: :mod:`~optimus.physics.model` (simulator), :mod:`~optimus.physics.camera`,
:mod:`~optimus.physics.motion` (synthetic dataset), :mod:`~optimus.physics.objective`,
:mod:`~optimus.physics.metrics`, :mod:`~optimus.physics.bench`, :mod:`~optimus.physics.figures`.
Requires the ``physics`` extra (``mujoco``, ``mujoco-mjx``).
"""
