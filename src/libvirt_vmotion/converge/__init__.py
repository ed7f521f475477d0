"""vMotion steps 3-7, pre-copy to switchover, steered by the convergence controller.

- pure: ``machine`` (State, TRANSITIONS, the rules ``step`` applies), ``progress``
  (phase-aware progress and the controller's report), ``ports`` (the Protocols);
- I/O: ``loop``, the only loop: starts the job, samples it, applies decisions, rolls back.
"""
