"""PyFed's job in fedloom: a Keras MLP, FedAvg, a server-side test, TensorBoard per client.

PyFed's ``FL_Server`` / ``FL_Client`` over sockets become `KerasClient` in a
``client_fn`` and one call: `fedloom.simulate` in one process, or
``fedloom.serve`` and ``fedloom.connect`` in separate processes or on separate
machines (same ``client_fn``). The server-side test on held-out data is
``evaluate``; the TensorBoard history per client per round is written to
``run_dir``. Keras runs on the torch backend unless ``KERAS_BACKEND`` says otherwise.

Run it: ``python docs/snippets/coming_from_pyfed.py``, then ``tensorboard --logdir runs/``.
"""

# --8<-- [start:run]
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before importing keras

import keras
from sklearn.datasets import load_digits

import fedloom
from fedloom import ClientContext, Weights
from fedloom.client import KerasClient
from fedloom.data import IID

digits = load_digits()
x_all, y_all = (digits.data / 16.0).astype("float32"), digits.target
x_train, y_train, x_test, y_test = x_all[:1500], y_all[:1500], x_all[1500:], y_all[1500:]


def make_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(  # named layers: the weights' names are the same in every process
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="out"),
        ],
        name="mlp",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def client_fn(context: ClientContext) -> KerasClient:
    rows = context.partition(y_train)
    return KerasClient(make_model(), x_train[rows], y_train[rows], local_epochs=1, batch_size=16)


def evaluate(weights: Weights, server_round: int) -> dict[str, float]:
    """PyFed's server-side test on held-out data."""
    model = make_model()
    model.set_weights(list(weights.values()))
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"loss": float(loss), "accuracy": float(accuracy)}


def main(rounds: int = 5, num_clients: int = 3, run_dir: str = "runs/coming-from-pyfed"):
    return fedloom.simulate(
        client_fn,
        num_clients=num_clients,
        rounds=rounds,
        strategy=fedloom.fedavg(fraction_evaluate=0.0),
        partitioner=IID(),
        evaluate_fn=evaluate,
        run_dir=run_dir,
    )


# --8<-- [end:run]


if __name__ == "__main__":
    print("test accuracy:", main().history.last("central.accuracy"))
