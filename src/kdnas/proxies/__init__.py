"""Training-free proxies: DisWOT and the zero-cost baselines behind one API (:func:`compute_proxies`)."""

from kdnas.proxies.base import PROXIES, apply_init, compute_proxies, get_proxy, list_proxies, register_proxy
from kdnas.proxies.diswot import TeacherStats, combine_terms, teacher_stats

__all__ = ["PROXIES", "TeacherStats", "apply_init", "combine_terms", "compute_proxies", "get_proxy", "list_proxies",
           "register_proxy", "teacher_stats"]
