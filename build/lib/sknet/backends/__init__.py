"""One subpackage per framework, each a thin translation of ``sknet.spec``.

Importing ``backends`` imports no framework; ``sknet.backends.torch`` imports PyTorch and
``sknet.backends.mindspore`` imports MindSpore.
"""
