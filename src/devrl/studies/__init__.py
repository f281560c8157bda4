"""One module per part of the book: its data-set builder, its loader for the notebooks, its
summaries and verdicts. A study imports measures, datasets, toys, runs and core; never another
study."""
