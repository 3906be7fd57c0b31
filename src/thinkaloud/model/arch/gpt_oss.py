"""gpt-oss: attention sinks, alternating sliding windows, biased projections and a mixture-of-experts MLP.

- Attention: a learned sink logit per head joins the softmax (``sinks``), inside the HF attention
  module (eager), which generation calls; layers alternate sliding-window and full attention.
- K/V of a frozen state: input norm, ``k_proj``/``v_proj`` with biases, the module's own rotary (it
  rotates the two halves of each head; YaRN-scaled).
- The MLP is router + experts; generation calls a layer only for the rows that have not exited, so an
  exited token runs no experts above its exit.
"""

from thinkaloud.model.arch.family import Family, kv_after_input_norm, windows_by_layer_type

FAMILIES = [
    Family("gpt_oss", kv=kv_after_input_norm, sliding_windows=windows_by_layer_type),
]
