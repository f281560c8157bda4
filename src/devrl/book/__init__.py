"""The book's machinery: the papermill runner of the figure notebooks, the plot theme and
export, and the vendored browser scripts."""
