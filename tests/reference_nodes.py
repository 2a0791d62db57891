"""The reference extension's ComfyUI node inputs (z-tipo-extension HEAD d6bbb86, read for
shared/docs/hosts.md §1), written out as data: our nodes must declare the same."""

# Its MODEL_NAME_LIST (tipo-kgen 0.3.1): GGUF entries, then the bare repo ids.
REFERENCE_MODEL_LIST = [
    "KBlueLeaf/TIPO-v2.1-1B-A200M | TIPO-v2.1-1B-A200M-f16.gguf",
    "KBlueLeaf/TIPOv2-1B-A200M | TIPOv2-1B-A200M-f16.gguf",
    "KBlueLeaf/TIPO-500M-ft | TIPO-500M-ft-F16.gguf",
    "KBlueLeaf/TIPO-200M-ft2 | TIPO-200M-ft2-F16.gguf",
    "KBlueLeaf/TIPO-200M-ft | TIPO-200M-ft-F16.gguf",
    "KBlueLeaf/TIPO-500M | TIPO-500M_epoch5-F16.gguf",
    "KBlueLeaf/TIPO-200M | TIPO-200M-40Btok-F16.gguf",
    "KBlueLeaf/TIPO-100M | TIPO-100M-F16.gguf",
    "KBlueLeaf/TIPO-v2.1-1B-A200M",
    "KBlueLeaf/TIPOv2-1B-A200M",
    "KBlueLeaf/TIPO-500M-ft",
    "KBlueLeaf/TIPO-200M-ft2",
    "KBlueLeaf/TIPO-200M-ft",
    "KBlueLeaf/TIPO-500M",
    "KBlueLeaf/TIPO-200M",
    "KBlueLeaf/TIPO-100M",
]
# Its default format text, with the trailing spaces after the first three commas.
REFERENCE_FORMAT_TEXT = (
    "<|special|>, \n<|characters|>, <|copyrights|>, \n<|artist|>, \n\n<|general|>,\n\n"
    "<|extended|>.\n\n<|quality|>, <|meta|>, <|rating|>"
)
TEXT = ("STRING", {"defaultInput": True, "multiline": True})
LENGTH = (["very_short", "short", "long", "very_long"], {"default": "long"})
# The TIPO node's inputs, in order (TIPOOperation has ``operation`` in place of ``format``).
REFERENCE_TIPO_INPUTS = {
    "tags": TEXT,
    "nl_prompt": TEXT,
    "ban_tags": TEXT,
    "tipo_model": (REFERENCE_MODEL_LIST, {"default": REFERENCE_MODEL_LIST[0]}),
    "format": ("STRING", {"default": REFERENCE_FORMAT_TEXT, "multiline": True}),
    "width": ("INT", {"default": 1024, "max": 16384}),
    "height": ("INT", {"default": 1024, "max": 16384}),
    "temperature": ("FLOAT", {"default": 0.5, "step": 0.01}),
    "top_p": ("FLOAT", {"default": 0.95, "step": 0.01}),
    "min_p": ("FLOAT", {"default": 0.05, "step": 0.01}),
    "top_k": ("INT", {"default": 80}),
    "tag_length": LENGTH,
    "nl_length": LENGTH,
    "seed": ("INT", {"default": 1234}),
    "device": (["cpu", "cuda"], {"default": "cuda"}),
}
REFERENCE_OPERATIONS = ["None", "long_to_tag", "short_to_tag", "short_to_tag_to_long",
                        "tag_to_long", "tag_to_long_to_short", "tag_to_short",
                        "tag_to_short_to_long"]  # fmt: skip
