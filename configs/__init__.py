"""Package data: the model specs (models/*.yaml) and training recipes (recipes/*.yaml).

Installed as ``sknet.configs``; ``sknet.registry`` finds them through importlib.resources.
"""
