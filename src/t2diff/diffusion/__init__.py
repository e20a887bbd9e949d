"""Diffusion schedules and the q_sample / p_step math (no network code)."""

from t2diff.diffusion.schedule import REVERSE_NOISE, SCHEDULES, NoiseSchedule, make_betas

__all__ = ["NoiseSchedule", "make_betas", "SCHEDULES", "REVERSE_NOISE"]
