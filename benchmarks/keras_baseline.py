"""The official DCASE 2020 Task 1B baseline in Keras, timed one training epoch per stdin line (a row of train_throughput.py).

    python benchmarks/keras_baseline.py DATA.npz --threads 2    # then: 'epoch' lines in, seconds out; 'quit'

The network and optimiser of toni-heittola/dcase2020_task1_baseline:task1b.yaml (learner `cnn`, as
models/baseline.py ports it): Conv2D 32 7x7 same -> BN -> ReLU -> MaxPool 5x5 -> Dropout 0.3 ->
Conv2D 64 7x7 same -> BN -> ReLU -> MaxPool 4x100 -> Dropout 0.3 -> Flatten -> Dense 100 ReLU ->
Dropout 0.3 -> Dense softmax; Adam (lr 0.001), categorical cross-entropy, `model.fit` on the whole
split in memory with shuffling. DATA.npz holds `x` (N, mels, frames, channels) float32 and `y` (N,)
class indices. It runs in its own process so that TensorFlow's thread pools never run beside
torch's; it prints `ready TF_VERSION KERAS_VERSION` once built, then each epoch's seconds (the
epoch itself, from Keras's epoch callbacks) per `epoch` line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def build(keras, input_shape: tuple[int, int, int], n_classes: int):
    layers = keras.layers
    model = keras.Sequential([keras.Input(input_shape)])
    for filters, pool in ((32, (5, 5)), (64, (4, 100))):
        model.add(layers.Conv2D(filters, 7, padding="same", kernel_initializer="glorot_uniform"))
        model.add(layers.BatchNormalization())
        model.add(layers.Activation("relu"))
        model.add(layers.MaxPooling2D(pool))
        model.add(layers.Dropout(0.3))
    model.add(layers.Flatten())
    model.add(layers.Dense(100, activation="relu", kernel_initializer="uniform"))
    model.add(layers.Dropout(0.3))
    model.add(layers.Dense(n_classes, activation="softmax", kernel_initializer="uniform"))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001), loss="categorical_crossentropy")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--threads", type=int, required=True, help="TensorFlow intra-op and inter-op threads")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # Both pools at the thread count torch gets (TensorFlow's default for that many cores).
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    data = np.load(args.data)
    x, y = data["x"], data["y"]
    n_classes = int(y.max()) + 1
    model = build(keras, x.shape[1:], n_classes)
    targets = np.eye(n_classes, dtype=np.float32)[y]

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    print(f"ready {tf.__version__} {keras.__version__}", flush=True)
    for line in sys.stdin:
        if line.strip() != "epoch":
            break
        model.fit(x, targets, batch_size=args.batch, epochs=1, shuffle=True, verbose=0, callbacks=[clock])
        print(f"{clock.seconds:.6f}", flush=True)


if __name__ == "__main__":
    main()
