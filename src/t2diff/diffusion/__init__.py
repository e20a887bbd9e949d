"""Diffusion math (no network code): noise schedules (betas, q_sample, posterior) and the samplers that run the
reverse chain over them."""

from t2diff.diffusion.samplers import REVERSE_NOISE, SAMPLERS, DDIMSampler, DDPMSampler, Sampler, make_sampler
from t2diff.diffusion.schedule import SCHEDULES, NoiseSchedule, make_betas

__all__ = ["NoiseSchedule", "make_betas", "SCHEDULES", "REVERSE_NOISE", "SAMPLERS", "Sampler", "DDPMSampler",
           "DDIMSampler", "make_sampler"]
