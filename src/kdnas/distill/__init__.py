"""Distillation: pure loss functions (:mod:`kdnas.distill.functional`) and the modules built on them."""
