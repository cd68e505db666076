"""Update policies: which tag or digest a deployment may move to. One small module per
strategy; pure (no I/O, no clock) and at the bottom of the layers: they import only
:mod:`poller.versions`. (Which images a source's refs should become is
:mod:`poller.builds.plans`.)"""
