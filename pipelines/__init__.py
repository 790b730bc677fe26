"""Ray-side code: training on Ray Train, stage actors and batch jobs. The library never imports this."""
