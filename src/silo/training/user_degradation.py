"""Re-export of :mod:`silo.degradations.user`, where the user degradation lives."""

from silo.degradations.user import UserDegradation, load_callable, load_user_degradation, probe_scale, user_task

__all__ = ["UserDegradation", "load_callable", "load_user_degradation", "probe_scale", "user_task"]
