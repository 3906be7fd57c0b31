"""The model organism: a tiny Llama trained from scratch on variable-binding chains (the ``organism`` task),
in which an exit penalty's effect on where the computation happens — in the layers or in the text —
can be seen or refuted. ``model`` holds its recipe, tokenizer and cache; ``pretrain`` trains and
measures it.
"""
