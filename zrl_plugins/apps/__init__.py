"""What is built on the trainers: recipes and ``zrl train``, the demo, evaluation, generated tasks and data loaders,
plots, the behaviour monitor, model resolution and loading, the console, and test helpers."""
