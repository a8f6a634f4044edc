"""cli: the `edge` console script. Thin: parse options, call into `edge`/`origin`, print."""
