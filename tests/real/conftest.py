"""The embedded real model, SmolLM2-135M-Instruct (converted once into the user cache)."""

import pytest

from thinkaloud.config import ExitConfig
from thinkaloud.hub import load_causal_lm, load_tokenizer
from thinkaloud.model.early_exit import EarlyExitModel


@pytest.fixture(scope="session")
def smollm2():
    base, _ = load_causal_lm("smollm2-135m")
    model = EarlyExitModel.from_base(base, ExitConfig()).eval()
    assert model.num_layers == 30 and model.layers == [5, 10, 15, 20, 25]
    return model


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    return load_tokenizer("smollm2-135m")


TEXT = (
    "The river town woke slowly. Fishermen pulled their boats onto the gravel bank while the baker, "
    "who had been up since three, stacked loaves of dark rye in the window. Children ran past the "
    "chapel on their way to school, arguing about whether the heron on the weir was the same one they "
    "had seen last spring. At the post office, Mrs. Alder sorted letters into wooden pigeonholes, "
    "pausing now and then to read a postcard she was not supposed to read. A letter from the capital "
    "announced that the old bridge would be replaced before winter, and by noon everyone in town had "
    "an opinion about it. Some said the bridge had stood for two hundred years and would stand for two "
    "hundred more; others pointed at the cracks in the third arch and the way the railings shook when "
    "the grain lorries crossed. The mayor called a meeting for Thursday evening in the school hall. "
    "To solve the problem of the traffic during construction, the engineers proposed a temporary ferry: "
    "a flat barge pulled along a cable, able to carry two cars and twenty people at a time. If the "
    "ferry made one crossing every ten minutes from six in the morning until eight at night, it could "
    "move eighty-four loads a day, which, the engineer explained, was more than the bridge carried on "
    "an ordinary Tuesday. The baker asked whether the ferry would run on Sundays. The engineer said it "
    "would, and the hall fell quiet, because nobody had thought of that. Later, walking home along the "
    "water, the children saw the heron again, standing perfectly still on one leg in the shallows."
)
