"""Pulse-rate estimation from wrist PPG + acceleration: simulated data, a small TCN, heartpy check,
and a real PPG-DaLiA recording (`gos_tvm.ppg.dalia`, from the kid-ppg wheel's data file).

See tutorials/ppg_heart_rate.py for the end-to-end example (train, adapt with `gos_tvm.tune`,
cross-compile for the Raspberry Pi 3).  Needs the optional packages neurokit2 and heartpy.
"""
from .data import (CHANNELS, FS, HR_MAX, HR_MIN, WINDOW, DataConfig, PPGData, Split, generate,
                   heartpy_compare, heartpy_recording, resample, simulate_subject, simulate_window,
                   spectral_hr, spectral_hr_acc, window_input)
from .model import TCN, fine_tune, mae, predict_torch, train

__all__ = ["CHANNELS", "FS", "HR_MAX", "HR_MIN", "WINDOW", "DataConfig", "PPGData", "Split", "generate",
           "heartpy_compare", "heartpy_recording", "resample", "simulate_subject", "simulate_window",
           "spectral_hr", "spectral_hr_acc", "window_input", "TCN", "fine_tune", "mae", "predict_torch", "train"]
