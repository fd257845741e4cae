"""Time-series forecasting: a GRU forecasts the yearly sunspot numbers (1700-2008, shipped
in statsmodels.datasets) one year ahead, compared on the last 40 years with the naive
forecast "same as last year". Saves a PNG of forecast against truth.

    python examples/forecast_sunspots.py --plot sunspots.png
"""

import time

import numpy as np

import fastrnn
from fastrnn import nn, optim

from _common import Progress, backend_name, parser


def load_sunspots():
    from statsmodels.datasets import sunspots
    data = sunspots.load_pandas().data
    return data["YEAR"].to_numpy(), data["SUNACTIVITY"].to_numpy(dtype=np.float64)


def windows(series, window):
    """Inputs ``[window, N, 1]`` (time-major) and next values ``[N, 1]``."""
    idx = np.arange(len(series) - window)[None, :] + np.arange(window)[:, None]
    return series[idx][..., None], series[window:][:, None]


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--window", type=int, default=24, help="years of history per forecast")
    p.add_argument("--test-years", type=int, default=40, help="last years held out")
    p.add_argument("--hidden", type=int, default=32, help="GRU units")
    p.add_argument("--epochs", type=int, default=300, help="passes over the training windows")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    p.add_argument("--plot", default="sunspots_forecast.png", help="where to save the PNG")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.hidden = 5, 8

    years, spots = load_sunspots()
    scale = spots[:-args.test_years].std()
    series = (spots / scale).astype(np.float32)
    x, y = windows(series, args.window)
    n_test = args.test_years
    x_train, y_train = x[:, :-n_test], y[:-n_test]
    x_test, y_test = x[:, -n_test:], y[-n_test:]
    print(f"sunspots {int(years[0])}-{int(years[-1])}: {x_train.shape[1]} training windows, "
          f"{n_test} test years")

    kw = dict(backend=args.backend, seed=args.seed)
    model = nn.Sequential(fastrnn.GRU(1, args.hidden, **kw), nn.LastStep(),
                          nn.Linear(args.hidden, 1, **kw))
    opt = optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    bar = Progress(args.epochs, "training")
    for _ in bar:
        order = rng.permutation(x_train.shape[1])
        for batch in np.array_split(order, 4):
            loss, grad = nn.mse_loss(model(x_train[:, batch]), y_train[batch])
            opt.zero_grad()
            model.backward(grad)
            optim.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        bar.status = f"train mse {loss:.4f}"
    elapsed = time.perf_counter() - t0

    model.eval()
    forecast = model(x_test)[:, 0] * scale
    truth = y_test[:, 0] * scale
    naive = x_test[-1, :, 0] * scale
    rmse = float(np.sqrt(np.mean((forecast - truth) ** 2)))
    rmse_naive = float(np.sqrt(np.mean((naive - truth) ** 2)))
    print(f"test RMSE over {n_test} years: GRU {rmse:.1f}, naive last-value {rmse_naive:.1f} "
          f"sunspots ({rmse / rmse_naive:.2f}x); trained in {elapsed:.1f} s on the "
          f"{backend_name(args.backend)} backend")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        test_years = years[-n_test:]
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot(years, spots, color="lightgrey", label="history")
        ax.plot(test_years, truth, color="black", label="truth")
        ax.plot(test_years, forecast, color="tab:blue", label=f"GRU (RMSE {rmse:.1f})")
        ax.plot(test_years, naive, color="tab:orange", ls="--",
                label=f"last value (RMSE {rmse_naive:.1f})")
        ax.set_xlabel("year")
        ax.set_ylabel("sunspot number")
        ax.set_title("One-year-ahead forecasts on the held-out tail")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"plot: {args.plot}")
    return rmse, rmse_naive


if __name__ == "__main__":
    main()
