"""One subpackage per framework, each a thin translation of ``sknet.spec``.

Importing ``backends`` imports no framework; ``backends.torch`` imports PyTorch and
``backends.mindspore`` imports MindSpore.
"""
