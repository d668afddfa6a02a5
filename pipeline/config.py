"""Constants shared by every pipeline step.

Importing this module has no side effects: no folders, no tracking URI, no logging set-up.
"""

MODEL_NAME = "california-housing"
EXPERIMENT_NAME = "california-housing"

FEATURES = (
    "MedInc",
    "HouseAge",
    "AveRooms",
    "AveBedrms",
    "Population",
    "AveOccup",
    "Latitude",
    "Longitude",
)
TARGET = "MedHouseVal"

# Where scikit-learn downloads the data set from; recorded as the run input's source.
SKLEARN_SOURCE = "sklearn.datasets.fetch_california_housing"
SKLEARN_SOURCE_URL = "https://ndownloader.figshare.com/files/5976036"

# Fewer rows than this cannot give both a training set that determines 9 parameters and a
# held-out set whose R² means anything.
MIN_ROWS = 20

ALIAS_CHALLENGER = "challenger"
ALIAS_QUANTIZED = "quantized"
ALIAS_CHAMPION = "champion"
ALIAS_PREVIOUS_CHAMPION = "previous-champion"

CHAMPION_URI = f"models:/{MODEL_NAME}@{ALIAS_CHAMPION}"
CHALLENGER_URI = f"models:/{MODEL_NAME}@{ALIAS_CHALLENGER}"

# Name of the model inside each run that logs one (train's float model, quantize's).
MODEL_ARTIFACT = "model"
# Column of predictions in `predict`'s output and `monitor`'s report.
PREDICTION = "prediction"

# Artifact written by every run that registers a model: which rows trained and tested it.
SPLIT_ARTIFACT = "split.json"

# Packages a logged model needs at serving time; versions are read from the installed ones.
MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "pandas", "scipy")

# Exit codes of the command-line steps.
EXIT_ERROR = 2
EXIT_REJECTED = 3
