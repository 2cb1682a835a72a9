"""The Ray Tune adapters: the tree's search algorithm and scheduler, Optuna, the trial function, progress."""
