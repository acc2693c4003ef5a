"""The systems a chaos run can test out of the box (``[system] kind``): ``orbital``
(:mod:`harness.systems.orbital`) and ``etcd`` (:mod:`harness.systems.etcd`). Each implements
:class:`harness.system.System` and the capabilities it has."""
