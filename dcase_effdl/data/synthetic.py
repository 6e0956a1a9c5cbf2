"""Procedural synthetic acoustic scenes written in exactly the TAU Urban Acoustic Scenes 2020 3Class layout.

`make_dataset(out)` writes meta.csv, evaluation_setup/fold1_{train,evaluate,test}.csv and
audio/<scene>-<city>-<location>-<segment>-a.wav for the ten TAU scenes (three classes). Each
recording location has its own random acoustics (levels, EQ tilt, reverb, engine and hum f0s) and
the classes share sounds (babble, traffic, announcements, rumble), so a small CNN learns something
real but does not reach 100 %: the data exists to test the pipeline end to end, not to claim scores.
Locations hold two clips each, so 300 clips come from 150 locations: a classifier sees enough of
them to learn to ignore what is particular to one (with five clips per location the quickstart's
test accuracy over training seeds ranged from 52 % to 77 %).

Sounds are composed at 16 kHz (everything below 8 kHz), then one FFT stage applies the location's
EQ tilt and room reverb, resamples to the file rate and fills 8-24 kHz with a location-specific air
noise, so every mel band of a 48 kHz front end carries signal.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dcase_effdl.errors import UserError

SCENES = {
    "indoor": ("airport", "shopping_mall", "metro_station"),
    "outdoor": ("park", "public_square", "street_pedestrian", "street_traffic"),
    "transportation": ("bus", "metro", "tram"),
}
CITIES = ("barcelona", "helsinki", "lisbon", "london", "lyon", "paris")
# TAU has ~28. Fewer per location gives more locations, i.e. more variety: with 5, the quickstart's
# 60 validation clips came from 12 locations and its accuracy jumped by 8 pp whenever one flipped.
CLIPS_PER_LOCATION = 2
EVALUATE_FRACTION = 0.3
INTERNAL_RATE = 16000  # Hz; sounds are composed here, content above 8 kHz is added in the FFT stage
MARKER = "synthetic.json"
GENERATOR_VERSION = 3

# Per scene: component -> (probability that a location has it, mean level in dB). Shared
# components (babble, traffic, announcements, rumble, impacts) make the classes overlap.
_SCENE_SOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "airport": {"babble": (1.0, 0), "hum": (0.85, -4), "announce": (0.6, -5), "impacts": (0.6, -8), "rumble": (0.2, -12), "engine": (0.1, -14)},
    "shopping_mall": {"babble": (1.0, 0), "hum": (0.9, -5), "impacts": (0.7, -6), "announce": (0.2, -8), "traffic": (0.05, -14)},
    "metro_station": {"babble": (0.8, -2), "hum": (0.7, -5), "announce": (0.7, -4), "rumble": (0.5, -6), "rail": (0.35, -8), "engine": (0.1, -12), "impacts": (0.5, -8)},
    "park": {"wind": (0.85, -2), "birds": (1.0, -2), "babble": (0.25, -10), "traffic": (0.3, -12), "impacts": (0.2, -12)},
    "public_square": {"babble": (0.6, -5), "traffic": (0.5, -6), "birds": (0.5, -6), "wind": (0.5, -5), "impacts": (0.5, -8)},
    "street_pedestrian": {"babble": (0.6, -5), "traffic": (0.8, -3), "impacts": (0.6, -6), "wind": (0.4, -6), "birds": (0.25, -10)},
    "street_traffic": {"traffic": (1.0, 0), "engine": (0.3, -8), "wind": (0.4, -6), "babble": (0.2, -12), "impacts": (0.2, -10)},
    "bus": {"engine": (1.0, 0), "rumble": (0.9, -3), "babble": (0.35, -10), "announce": (0.25, -8), "traffic": (0.2, -12), "impacts": (0.3, -10)},
    "metro": {"rumble": (1.0, 0), "rail": (0.9, -3), "announce": (0.5, -5), "babble": (0.3, -10), "hum": (0.3, -10), "engine": (0.2, -10)},
    "tram": {"rumble": (0.9, -2), "rail": (0.8, -4), "engine": (0.5, -4), "announce": (0.35, -6), "babble": (0.3, -10), "traffic": (0.25, -10)},
}
# Room reverb per class: (RT60 range in s, wet gain range). Vehicles and open air overlap; indoor
# halls are the reverberant ones (in version 2 their ranges overlapped the vehicles' too).
_REVERB = {"indoor": ((0.8, 2.4), (0.6, 1.5)), "transportation": ((0.2, 0.6), (0.2, 0.5)), "outdoor": ((0.05, 0.3), (0.0, 0.15))}


# ---------------------------------------------------------------- signal building blocks


def _white_spectrum(rng: np.random.Generator, bins: int) -> np.ndarray:
    """Random complex spectrum of `bins` bins, unit variance per part.

    Uniform rather than Gaussian parts: 4x cheaper to draw, and after the inverse FFT every sample
    (and every STFT bin, which pools hundreds of FFT bins) is a sum of many of them, i.e. Gaussian.
    """
    u = rng.random(2 * bins, dtype=np.float32)
    return ((u - np.float32(0.5)) * np.float32(np.sqrt(12.0))).view(np.complex64)


class _Synth:
    """Sound generators for one clip: `n` samples at `fs` Hz drawn from `rng`."""

    def __init__(self, rng: np.random.Generator, n: int, fs: int, cache: dict | None = None):
        self.rng, self.n, self.fs = rng, n, fs
        # Spectral shapes depend only on the location's parameters: clips of a location share them.
        self.cache = {} if cache is None else cache
        self.f = self.cached(("f", n, fs), lambda: np.maximum(np.fft.rfftfreq(n, 1.0 / fs), 1.0))  # Hz, >= 1

    def cached(self, key: tuple, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def noise(self, gain: np.ndarray) -> np.ndarray:
        """Gaussian noise with magnitude spectrum `gain` (over self.f), unit RMS."""
        x = np.fft.irfft(_white_spectrum(self.rng, self.f.size) * gain, self.n)
        return x / (np.sqrt(np.mean(x * x)) + 1e-12)

    def band(self, lo: float, hi: float, order: float = 2.0) -> np.ndarray:
        """Smooth band-pass magnitude between `lo` and `hi` Hz (Butterworth-like skirts)."""
        f = self.f
        return self.cached(
            ("band", f.size, lo, hi, order),
            lambda: (1.0 / np.sqrt((1.0 + (lo / f) ** (2 * order)) * (1.0 + (f / hi) ** (2 * order)))).astype(np.float32),
        )

    def pink(self, lo: float, hi: float, order: float = 1.0) -> np.ndarray:
        """`band(lo, hi)` with a 1/f power slope."""
        return self.cached(
            ("pink", self.f.size, lo, hi, order), lambda: (self.band(lo, hi, order) / np.sqrt(self.f)).astype(np.float32)
        )

    def control(self, rate_hz: float) -> np.ndarray:
        """Standard normal control points every 1/rate_hz s covering the clip (see `expand`)."""
        return self.rng.standard_normal(max(2, int(self.n / self.fs * rate_hz) + 2))

    def expand(self, ctrl: np.ndarray) -> np.ndarray:
        """Control points joined linearly into a curve of `n` samples."""
        return np.interp(np.arange(self.n) * ((ctrl.size - 1) / self.n), np.arange(ctrl.size), ctrl)

    def trajectory(self, rate_hz: float) -> np.ndarray:
        """A slow random curve (standard normal control points every 1/rate_hz s, linearly joined)."""
        return self.expand(self.control(rate_hz))

    def pulses(self, f0: np.ndarray, sharpness: float) -> np.ndarray:
        """Harmonic tone with instantaneous f0 (Hz per sample): a von Mises pulse train, unit RMS.

        exp(k cos(phase)) holds all harmonics with amplitudes I_h(k): larger k, brighter tone.
        """
        phase = 2 * np.pi * np.cumsum(f0) / self.fs
        x = np.exp(sharpness * (np.cos(phase) - 1.0))
        x -= x.mean()
        return x / (np.sqrt(np.mean(x * x)) + 1e-12)

    def events(self, rate_hz: float, length_s: float, min_count: int = 0) -> list[int]:
        """Start samples of Poisson events that fit in the clip."""
        count = max(min_count, self.rng.poisson(rate_hz * self.n / self.fs))
        span = max(1, self.n - int(length_s * self.fs))
        return sorted(int(s) for s in self.rng.integers(0, span, count))


def _add(out: np.ndarray, start: int, x: np.ndarray) -> None:
    """out[start:start+len(x)] += x, cut at the end of `out` (short clips)."""
    stop = min(out.size, start + x.size)
    if start < stop:
        out[start:stop] += x[: stop - start]


def _babble(s: _Synth, p: dict) -> np.ndarray:
    """Crowd speech: speech-band noise gated by several talkers' syllable envelopes (~4-6 Hz)."""
    gain = s.cached(
        ("babble",), lambda: (s.band(p["babble_lo"], p["babble_hi"], 1.5) * (s.f / 500.0) ** -0.3).astype(np.float32)
    )
    # Summed at control rate, expanded once: the same curve as expanding each talker, 8x cheaper.
    ctrl = 0.0
    for _ in range(p["talkers"]):
        syll = s.control(p["syllable_hz"])
        pauses = s.control(0.3)
        talking = np.interp(np.linspace(0, pauses.size - 1, syll.size), np.arange(pauses.size), pauses) > -0.3
        ctrl = ctrl + np.maximum(syll, 0.0) * talking  # talkers pause now and then
    env = s.expand(ctrl)
    env /= np.sqrt(np.mean(env * env)) + 1e-12
    return s.noise(gain) * env


def _hum(s: _Synth, p: dict) -> np.ndarray:
    """Ventilation: a steady low harmonic tone plus pink noise in the 100-1000 Hz range."""
    f0 = np.full(s.n, p["hum_f0"])
    tone = s.pulses(f0, p["hum_sharpness"])
    air = s.noise(s.pink(80.0, p["hum_air_hi"]))
    return 0.6 * tone + 0.8 * air


def _wind(s: _Synth, p: dict) -> np.ndarray:
    """Wind: low-passed noise modulated by gusts, with a little leaf rustle at 2-6 kHz."""
    gust = np.exp(p["gust_depth"] * s.trajectory(p["gust_hz"]))
    gust /= np.sqrt(np.mean(gust * gust))
    low = s.noise(s.band(15.0, p["wind_fc"], 1.5))
    rustle = s.noise(s.band(1500.0, 6000.0, 1.0))
    return gust * (low + p["rustle"] * rustle * gust)


def _birds(s: _Synth, p: dict) -> np.ndarray:
    """Birds: frequency-swept chirps (2-7 kHz, 30-250 ms), often repeated as trills."""
    out = np.zeros(s.n)
    for start in s.events(p["bird_rate"], 0.6, min_count=2):
        f_start = p["bird_f"] * s.rng.uniform(0.8, 1.25)
        sweep = s.rng.uniform(-0.5, 0.5) * f_start
        dur = s.rng.uniform(0.03, 0.25)
        repeats = int(s.rng.integers(1, 5))
        m = int(dur * s.fs)
        t = np.arange(m) / s.fs
        freq = np.clip(f_start + sweep * t / dur + 300 * np.sin(2 * np.pi * 30 * t), 500, 7500)
        chirp = np.sin(2 * np.pi * np.cumsum(freq) / s.fs) * np.hanning(m)
        for r in range(repeats):
            _add(out, start + int(r * dur * 1.3 * s.fs), chirp)
    return out * 2.0


def _traffic(s: _Synth, p: dict) -> np.ndarray:
    """Passing vehicles: road noise under Gaussian pass-by envelopes; brighter while approaching."""
    low = s.noise(s.band(40.0, p["road_fc"], 1.5))
    high = s.noise(s.band(p["road_fc"], 4000.0, 1.0))
    env_low = np.full(s.n, p["traffic_floor"])
    env_high = np.full(s.n, 0.3 * p["traffic_floor"])
    for start in s.events(p["pass_rate"], 0.0, min_count=1):
        width = s.rng.uniform(0.8, 2.5) * s.fs
        x = (np.arange(s.n) - start) / width
        bump = np.exp(-0.5 * x * x) * s.rng.uniform(0.5, 1.5)
        env_low += bump
        env_high += bump * (1.0 / (1.0 + np.exp(4.0 * x)))  # doppler-ish: more treble before the peak
    return env_low * low + 0.7 * env_high * high


def _engine(s: _Synth, p: dict) -> np.ndarray:
    """Engine: harmonic pulse train at f0 30-120 Hz that drifts with throttle, plus engine noise."""
    throttle = s.trajectory(p["throttle_hz"])
    f0 = p["engine_f0"] * np.exp(p["throttle_depth"] * throttle)
    tone = s.pulses(f0, p["engine_sharpness"])
    noise = s.noise(s.band(60.0, p["engine_noise_fc"], 1.5))
    load = 1.0 + 0.3 * throttle
    return load * (tone + 0.5 * noise)


def _rumble(s: _Synth, p: dict) -> np.ndarray:
    """Vehicle body rumble: strong noise below ~100-300 Hz with slow level changes."""
    low = s.noise(s.band(20.0, p["rumble_fc"], 2.0))
    return low * np.exp(0.3 * s.trajectory(0.5))


def _rail(s: _Synth, p: dict) -> np.ndarray:
    """Rail joints: pairs of damped clicks repeating every 0.4-1.5 s, plus wheel squeal at times."""
    out = np.zeros(s.n)
    period = int(p["rail_period"] * s.fs)
    gap = int(s.rng.uniform(0.08, 0.2) * s.fs)
    m = int(0.06 * s.fs)
    tt = np.arange(m) / s.fs
    click = np.sin(2 * np.pi * p["rail_ring"] * tt) * np.exp(-tt / 0.012)
    for start in range(int(s.rng.integers(0, period)), s.n - m - gap, period):
        for a in (start, start + gap):
            _add(out, a, click * s.rng.uniform(0.6, 1.2))
    if s.rng.random() < p["squeal"]:
        a = int(s.rng.integers(0, s.n // 2))
        b = min(s.n, a + int(s.rng.uniform(0.5, 2.5) * s.fs))
        tt = np.arange(b - a) / s.fs
        out[a:b] += 0.5 * np.sin(2 * np.pi * s.rng.uniform(2500, 5000) * tt) * np.hanning(b - a)
    return out * 3.0


def _announce(s: _Synth, p: dict) -> np.ndarray:
    """PA announcement: a chime, then a voiced pulse train through fixed formant peaks, 300-3400 Hz."""
    out = np.zeros(s.n)
    length = s.rng.uniform(2.0, 4.0)
    for start in s.events(p["announce_rate"], length + 0.8, min_count=0):
        m = int(0.25 * s.fs)
        tt = np.arange(m) / s.fs
        for k, tone in enumerate(p["chime"]):
            a = start + k * m
            _add(out, start + k * m, 0.6 * np.sin(2 * np.pi * tone * tt) * np.exp(-tt / 0.15))
        a = start + len(p["chime"]) * m
        if a > s.n - s.fs // 10:
            continue  # no room left for speech in a very short clip
        seg = _Synth(s.rng, _fft_length(int(length * s.fs), 1, 1), s.fs)
        f0 = p["voice_f0"] * np.exp(0.08 * seg.trajectory(2.0))
        voiced = seg.pulses(f0, 4.0)
        gain = seg.band(300.0, 3400.0, 3.0) * sum(
            1.0 / (1.0 + ((seg.f - fc) / (0.12 * fc)) ** 2) for fc in p["formants"]
        )
        voiced = np.fft.irfft(np.fft.rfft(voiced) * gain, seg.n)
        voiced /= np.sqrt(np.mean(voiced * voiced)) + 1e-12
        syll = np.maximum(seg.trajectory(p["syllable_hz"]) + 0.3, 0.0)
        _add(out, a, voiced * syll)
    return out


def _impacts(s: _Synth, p: dict) -> np.ndarray:
    """Footsteps, doors, trolleys: short decaying noise bursts."""
    out = np.zeros(s.n)
    for start in s.events(p["impact_rate"], 0.1):
        m = int(s.rng.uniform(0.01, 0.08) * s.fs)
        burst = s.rng.standard_normal(m) * np.exp(-np.arange(m) / (0.2 * m))
        _add(out, start, burst * s.rng.uniform(0.5, 2.0))
    return out


_SOUNDS = {
    "babble": _babble,
    "hum": _hum,
    "wind": _wind,
    "birds": _birds,
    "traffic": _traffic,
    "engine": _engine,
    "rumble": _rumble,
    "rail": _rail,
    "announce": _announce,
    "impacts": _impacts,
}


# ---------------------------------------------------------------- locations and clips


def _location_params(seed: int, location: int, scene: str, label: str, city_index: int) -> dict:
    """Random acoustics of one recording location (fixed for all its clips)."""
    rng = np.random.default_rng([seed, 1, location])
    city = np.random.default_rng([seed, 3, city_index])  # cities differ a little in EQ and background
    # Spreads of what is particular to a location (level, EQ tilt, background and air noise, sound
    # levels): in version 2 the locations made 55-96 % of the variance of a clip's mean log-mel per
    # band of the quickstart features, the class 0-43 % (28 % on average); narrowed to these
    # ranges, 47-85 % and 8-50 % (40 %): the location still dominates, but a CNN can see past it.
    sounds = {}
    for name, (prob, level_db) in _SCENE_SOUNDS[scene].items():
        if rng.random() < prob:
            sounds[name] = level_db + rng.normal(0.0, 2.0)
    if not sounds:  # a location always has at least its main sound
        name = max(_SCENE_SOUNDS[scene], key=lambda k: _SCENE_SOUNDS[scene][k][0])
        sounds[name] = _SCENE_SOUNDS[scene][name][1]
    (rt_lo, rt_hi), (wet_lo, wet_hi) = _REVERB[label]
    return {
        "room_seed": [seed, 4, location],
        "sounds": sounds,
        "background_db": rng.uniform(-20.0, -10.0),
        "background_fc": rng.uniform(150.0, 800.0),
        "tilt_db_per_octave": rng.normal(0.0, 0.4) + city.normal(0.0, 0.3),
        "air_slope": rng.uniform(1.0, 2.5),
        "air_db": rng.uniform(-9.0, -3.0),
        "level_dbfs": rng.uniform(-30.0, -22.0),
        "rt60": rng.uniform(rt_lo, rt_hi),
        "wet": rng.uniform(wet_lo, wet_hi),
        "talkers": int(rng.integers(2, 9)),
        "syllable_hz": rng.uniform(3.5, 6.5),
        "babble_lo": rng.uniform(100.0, 300.0),
        "babble_hi": rng.uniform(2000.0, 5000.0),
        "hum_f0": float(rng.choice([50.0, 60.0, 100.0, 120.0]) * rng.uniform(0.9, 1.1)),
        "hum_sharpness": rng.uniform(1.0, 5.0),
        "hum_air_hi": rng.uniform(400.0, 1500.0),
        "gust_hz": rng.uniform(0.2, 1.0),
        "gust_depth": rng.uniform(0.3, 1.0),
        "wind_fc": rng.uniform(120.0, 600.0),
        "rustle": rng.uniform(0.0, 0.3),
        "bird_rate": rng.uniform(1.0, 5.0),
        "bird_f": rng.uniform(2000.0, 5500.0),
        "road_fc": rng.uniform(400.0, 1500.0),
        "traffic_floor": rng.uniform(0.1, 0.6),
        "pass_rate": rng.uniform(0.1, 0.6),
        "engine_f0": rng.uniform(30.0, 120.0),
        "engine_sharpness": rng.uniform(2.0, 10.0),
        "engine_noise_fc": rng.uniform(300.0, 1500.0),
        "throttle_hz": rng.uniform(0.1, 0.5),
        "throttle_depth": rng.uniform(0.05, 0.3),
        "rumble_fc": rng.uniform(80.0, 300.0),
        "rail_period": rng.uniform(0.4, 1.5),
        "rail_ring": rng.uniform(800.0, 3000.0),
        "squeal": rng.uniform(0.0, 0.5),
        "announce_rate": rng.uniform(0.05, 0.2),
        "chime": list(rng.uniform(400.0, 1200.0, int(rng.integers(2, 4)))),
        "voice_f0": rng.uniform(90.0, 230.0),
        "formants": [rng.uniform(300, 800), rng.uniform(900, 2200), rng.uniform(2400, 3200)],
        "impact_rate": rng.uniform(0.3, 3.0),
        "channel_delay_ms": rng.uniform(0.1, 0.6),
    }


def _fft_length(min_len: int, fs: int, sample_rate: int) -> int:
    """Smallest m >= min_len with m and m * sample_rate / fs both 2-3-5-smooth (fast FFTs)."""
    step = fs // math.gcd(fs, sample_rate)  # m * sample_rate / fs must be an integer
    m = -(-min_len // step) * step
    while not (_smooth(m) and _smooth(m * sample_rate // fs)):
        m += step
    return m


def _smooth(x: int) -> bool:
    for p in (2, 3, 5):
        while x % p == 0:
            x //= p
    return x == 1


def _room(params: dict, n: int, fs: int, sample_rate: int) -> dict:
    """The location's fixed FFT-stage arrays: room response x EQ tilt, output bins, air-noise shape."""
    rng = np.random.default_rng(params["room_seed"])
    rt60 = params["rt60"]
    ir_n = int(min(rt60, 2.5) * fs)
    m = _fft_length(n + ir_n, fs, sample_rate)
    f = np.fft.rfftfreq(m, 1.0 / fs)
    octaves = np.log2(np.maximum(f, 20.0) / 1000.0)
    response = 10 ** (params["tilt_db_per_octave"] * octaves / 20) / np.sqrt(1.0 + (20.0 / np.maximum(f, 1.0)) ** 4)
    if ir_n > 0 and params["wet"] > 0:  # exponentially decaying noise: -60 dB at rt60
        tt = np.arange(ir_n) / fs
        ir = rng.standard_normal(ir_n) * 10 ** (-3.0 * tt / rt60)
        ir *= params["wet"] / (np.sqrt(np.sum(ir * ir)) + 1e-12)
        response = response * (1.0 + np.fft.rfft(ir, m))
    m_out = m * sample_rate // fs
    bins_out = m_out // 2 + 1
    k = min(f.size, bins_out)
    f_out = np.fft.rfftfreq(m_out, 1.0 / sample_rate)
    air = f_out[k:] / (fs / 2)
    air_shape = 10 ** (params["air_db"] / 20) * air ** -params["air_slope"] / np.sqrt(2)
    # float32 / complex64 from here on: 16- and 24-bit files need no more, and the FFTs run ~3x faster.
    return {
        "m": m,
        "response": (response[:k] * (m_out / m)).astype(np.complex64),  # m_out / m keeps the level
        "m_out": m_out,
        "k": k,
        "bins_out": bins_out,
        "f_out": f_out[:k],
        "ref_band": (f > 0.75 * fs / 2) & (f < 0.95 * fs / 2),
        "air_shape": (air_shape * (m_out / m)).astype(np.float32),
    }


def _render(
    params: dict, clip_seed: list[int], duration: float, sample_rate: int, channels: int, cache: dict | None = None
) -> np.ndarray:
    """One clip as float32 (samples, channels) at `sample_rate` Hz; `cache` is shared by a location's clips."""
    cache = {} if cache is None else cache
    rng = np.random.default_rng(clip_seed)
    fs = min(INTERNAL_RATE, sample_rate)
    n = _fft_length(int(math.ceil(duration * fs)), 1, 1)  # composed a little longer, cut at the end
    s = _Synth(rng, n, fs, cache)
    mix = s.noise(s.pink(20.0, params["background_fc"])) * 10 ** (params["background_db"] / 20)
    for name, level_db in sorted(params["sounds"].items()):
        jitter_db = rng.normal(0.0, 1.5)  # clips of one location differ a little
        mix += _SOUNDS[name](s, params) * 10 ** ((level_db + jitter_db) / 20)

    # FFT stage: room reverb (linear convolution), EQ tilt, resampling, air noise above fs / 2.
    room = s.cached(("room", n, fs, sample_rate), lambda: _room(params, n, fs, sample_rate))
    k = room["k"]
    spec = np.fft.rfft(mix.astype(np.float32), room["m"])
    ref = np.sqrt(np.mean(np.abs(spec[room["ref_band"]]) ** 2)) if room["ref_band"].any() else 0.0
    spec = spec[:k] * room["response"]
    n_out = int(round(duration * sample_rate))
    out = np.empty((n_out, channels), dtype=np.float32)
    y = np.empty(room["bins_out"], dtype=np.complex64)
    for c in range(channels):
        y[:k] = spec
        if c > 0:  # another microphone: small delay and gain difference
            delay_s = params["channel_delay_ms"] * 1e-3 * c
            y[:k] *= np.exp(-2j * np.pi * room["f_out"] * delay_s) * 10 ** (rng.normal(0.0, 1.0) / 20)
        if room["bins_out"] > k:  # air noise continuing the spectrum smoothly above the internal Nyquist
            y[k:] = _white_spectrum(rng, room["bins_out"] - k) * (np.float32(ref) * room["air_shape"])
        out[:, c] = np.fft.irfft(y, room["m_out"])[:n_out]

    rms = np.sqrt(np.mean(out * out, dtype=np.float64)) + 1e-12
    out *= np.float32(10 ** ((params["level_dbfs"] + rng.normal(0.0, 1.0)) / 20) / rms)
    peak = np.max(np.abs(out))
    if peak > 0.98:  # keep PCM files unclipped
        out *= np.float32(0.98 / peak)
    return out


# ---------------------------------------------------------------- dataset layout


def _plan(clips_per_class: int, seed: int) -> list[dict]:
    """Clip rows (filename, label, scene, city, location, segment, fold), sorted by segment."""
    rng = np.random.default_rng([seed, 0])
    rows = []
    location = 0
    for label in sorted(SCENES):
        scenes = SCENES[label]
        n_loc = min(clips_per_class, max(3, round(clips_per_class / CLIPS_PER_LOCATION)))
        sizes = [len(a) for a in np.array_split(np.arange(clips_per_class), n_loc)]
        n_eval = min(n_loc - 1, max(1, round(EVALUATE_FRACTION * n_loc)))
        first_scene = int(rng.integers(len(scenes)))
        # Evaluate locations evenly spaced through the locations grouped by scene (shuffled within a
        # scene): every scene gets its share of the evaluate fold, so the test mix of scenes, and with
        # it the accuracy, does not depend on the data seed's luck.
        by_scene = [rng.permutation(np.arange(k, n_loc, len(scenes))) for k in range(len(scenes))]
        grouped = np.concatenate(by_scene)
        evaluate = {int(grouped[int((j + 0.5) * n_loc / n_eval)]) for j in range(n_eval)}
        for i, size in enumerate(sizes):
            scene = scenes[(first_scene + i) % len(scenes)]
            city_index = int(rng.integers(len(CITIES)))
            for _ in range(size):
                rows.append(
                    {
                        "label": label,
                        "scene": scene,
                        "city_index": city_index,
                        "city": CITIES[city_index],
                        "location": location,
                        "fold": "evaluate" if i in evaluate else "train",
                    }
                )
            location += 1
    # Location numbers and segment numbers in random order, like TAU's mixed meta.csv.
    relabel = rng.permutation(location)
    order = rng.permutation(len(rows))
    planned = []
    for segment, idx in enumerate(order):
        row = dict(rows[idx])
        row["location"] = int(relabel[row["location"]])
        row["segment"] = segment
        row["filename"] = f"audio/{row['scene']}-{row['city']}-{row['location']}-{segment}-a.wav"
        row["identifier"] = f"{row['city']}-{row['location']}"
        planned.append(row)
    return planned


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


_OWN_ENTRIES = ("audio", "evaluation_setup", "meta.csv", MARKER, MARKER + ".tmp")


def _prepare_out(out: Path, params: dict, n_clips: int) -> bool:
    """Make `out` ready; True when it already holds this exact complete dataset."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    marker = out / MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    own_only = {p.name for p in out.iterdir()} <= set(_OWN_ENTRIES)
    if not isinstance(info, dict) or info.get("generator") != "dcase_effdl.data.synthetic":
        if own_only and not (out / "meta.csv").exists() and (out / (MARKER + ".tmp")).exists():
            info = {}  # interrupted while writing the marker itself
        else:
            raise UserError(
                f"{out}: folder is not empty and is not a synthetic dataset (no {MARKER}); refusing to overwrite it"
            )
    audio = out / "audio"
    n_audio = sum(1 for p in audio.iterdir() if p.suffix == ".wav") if audio.is_dir() else 0
    if info.get("complete") and info.get("params") == params and (out / "meta.csv").is_file() and n_audio == n_clips:
        return True
    # A previous or interrupted synthetic dataset: remove only what this generator writes.
    for name in _OWN_ENTRIES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return False


def make_dataset(
    out: str | Path,
    clips_per_class: int = 100,
    seed: int = 0,
    duration: float = 10.0,
    sample_rate: int = 48000,
    channels: int = 1,
    subtype: str = "PCM_16",
    workers: int = 0,
) -> Path:
    """Write a synthetic dataset in the TAU 2020 3Class layout under `out` and return its path.

    `clips_per_class` clips per class (indoor / outdoor / transportation), `duration` seconds each,
    WAV at `sample_rate` Hz with `channels` channels and soundfile `subtype`, rendered by `workers`
    threads (0 = one per core). Locations are split ~70/30 into train / evaluate (test = evaluate
    without labels), every class on both sides, each scene in proportion. The same arguments give
    byte-identical files, whatever `workers`. An existing complete dataset made with the same
    arguments is kept as is; an interrupted or different one is regenerated; any other non-empty
    folder is refused.
    """
    import soundfile as sf
    from tqdm import tqdm

    if not isinstance(clips_per_class, (int, np.integer)) or clips_per_class < 2:
        raise UserError(f"clips_per_class must be an integer >= 2 (one location per side), got {clips_per_class}")
    if not duration > 0 or not math.isfinite(duration):
        raise UserError(f"duration must be a positive number of seconds, got {duration}")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate < 8000:
        raise UserError(f"sample_rate must be an integer >= 8000 Hz, got {sample_rate}")
    if not isinstance(channels, (int, np.integer)) or not 1 <= channels <= 8:
        raise UserError(f"channels must be an integer from 1 to 8, got {channels}")
    if subtype not in sf.available_subtypes("WAV"):
        raise UserError(f"subtype '{subtype}' cannot be written to WAV; use one of PCM_16, PCM_24, FLOAT")

    out = Path(out).expanduser()
    params = {
        "version": GENERATOR_VERSION,
        "clips_per_class": int(clips_per_class),
        "seed": int(seed),
        "duration": float(duration),
        "sample_rate": int(sample_rate),
        "channels": int(channels),
        "subtype": subtype,
    }
    rows = _plan(int(clips_per_class), int(seed))
    if _prepare_out(out, params, len(rows)):
        return out
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "evaluation_setup").mkdir(exist_ok=True)
    # Marker first (complete: false): a run killed half-way is recognised and regenerated.
    marker = {"generator": "dcase_effdl.data.synthetic", "complete": False, "params": params}
    _write_text(out / MARKER, json.dumps(marker, indent=1) + "\n")

    # Grouped by location so each location's cached spectral shapes are built once and then freed.
    by_location: dict[int, list[dict]] = {}
    for row in rows:
        by_location.setdefault(row["location"], []).append(row)

    def write_location(loc: int) -> int:
        first = by_location[loc][0]
        params = _location_params(int(seed), loc, first["scene"], first["label"], first["city_index"])
        cache: dict = {}
        for row in by_location[loc]:
            audio = _render(params, [int(seed), 2, row["segment"]], float(duration), int(sample_rate), int(channels), cache)
            if subtype == "PCM_16":  # our own rounding: cheaper than libsndfile's float conversion
                audio = np.round(audio * np.float32(32767.0)).astype(np.int16)
            sf.write(out / row["filename"], audio, int(sample_rate), subtype=subtype, format="WAV")
        return len(by_location[loc])

    # Threads, one location each: numpy's FFTs and soundfile release the GIL, and every clip is a
    # function of its own seeds only, so the files are the same bytes for any number of threads.
    workers = max(1, min(workers if workers > 0 else os.cpu_count() or 1, len(by_location)))
    with tqdm(total=len(rows), desc="synthetic audio", unit="clip", disable=None) as bar, \
            ThreadPoolExecutor(workers, thread_name_prefix="synthetic") as pool:
        for n in pool.map(write_location, sorted(by_location)):
            bar.update(n)

    def table(header: str, lines: list[str]) -> str:
        return header + "\n" + "".join(line + "\n" for line in lines)

    train = [r for r in rows if r["fold"] == "train"]
    evaluate = [r for r in rows if r["fold"] == "evaluate"]
    setup = out / "evaluation_setup"
    _write_text(setup / "fold1_train.csv", table("filename\tscene_label", [f"{r['filename']}\t{r['label']}" for r in train]))
    _write_text(setup / "fold1_evaluate.csv", table("filename\tscene_label", [f"{r['filename']}\t{r['label']}" for r in evaluate]))
    _write_text(setup / "fold1_test.csv", table("filename", [r["filename"] for r in evaluate]))
    # meta.csv last: its presence plus the complete marker means every file above was written.
    _write_text(
        out / "meta.csv",
        table(
            "filename\tscene_label\tidentifier\tsource_label",
            [f"{r['filename']}\t{r['label']}\t{r['identifier']}\ta" for r in rows],
        ),
    )
    marker["complete"] = True
    marker["n_clips"] = len(rows)
    _write_text(out / MARKER, json.dumps(marker, indent=1) + "\n")
    return out
