"""The Amodal application: the ``amodal`` command, its built-in graphs, progress and summaries.

It sits on the runtime (``pipeline``) and registers the product's stage package (``stages``) as a
plugin of every graph it loads; the model programs (``amodal train | eval | export ...``) are in
``amodal.commands``.
"""
