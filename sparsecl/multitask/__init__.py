"""Controllable multi-task learning (Efficient Controllable Multi-Task Architectures, ICCV 2023).

A shared slimmable encoder and slimmable per-task decoders (``model``), trained as a SuperNet with sandwich-rule
SubNets and configuration-invariant distillation (``train``); after training, ``search`` maps a MAC budget
and a task-preference vector to encoder/decoder widths without retraining. ``data`` holds the embedded
procedural scene dataset and loaders for NYUD-v2, PASCAL-Context and CIFAR100-MTL; ``metrics`` the task and
controllability metrics. Submodules import on use, so ``import sparsecl.multitask`` stays light.
"""
