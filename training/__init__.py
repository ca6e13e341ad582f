"""Training assembly: what ``train.py`` is made of, built on models/ and datasets/.

- ``building``: models, optimisers and the initial congealing target from the options;
- ``step``: one iteration's objective and the EMA update;
- ``checks``: what the ranks agree on after a step (non-finite values, stop signals);
- ``state``: checkpoint contents beyond weights (iteration, RNG states, generator weights);
- ``report``: image grids every ``--vis_every`` iterations and the final PCK-Transfer;
- ``writer``: TensorBoard scalars and grids, and the grids as PNG files.
"""
