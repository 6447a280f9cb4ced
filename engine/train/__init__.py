"""What trains the models: the stage loop of `imusic train` and its stages, the codec stage, the embedded model's
recipe, and the stem data sets they read (data/).

config (TrainConfig) -> loop (train(), driving a stage of stages.py: adapters.py, base.py with template.py) on
clips from feeding.py, saved by checkpoints.py; cli is `imusic train`. codec_train.py trains a codec in its own loop;
default_model.py assembles the embedded model from the three runs. This file imports nothing: `imusic data` stays
torch-free.
"""
