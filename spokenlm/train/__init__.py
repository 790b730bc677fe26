"""Training components shared by the recipes (spokenlm/recipes/): configs from files, checkpoints,
metrics, learning-rate schedules and the few distributed helpers a recipe needs.

Recipes are short linear scripts; they run in one process or, unchanged, as Ray Train workers
(pipelines/ray_train.py), where torch.distributed is already initialised for them.
"""
