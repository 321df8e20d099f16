"""Adapters that plug labelsmooth's losses into other training frameworks.

Each adapter lives in its own submodule and is imported only when asked for, so that ``import
labelsmooth`` never imports a framework (see :mod:`labelsmooth.integrations.huggingface`).
"""
