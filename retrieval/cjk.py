"""Unicode ranges of Chinese, Japanese and Korean text, as bodies of a regex character class (`f"[{…}]"`)."""

# CJK ideographs: extension A, the unified block, compatibility ideographs.
CJK_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# The CJK symbols and punctuation block, and half- and full-width forms (，。：！ and full-width letters).
CJK_PUNCTUATION = "\u3000-\u303f\uff00-\uffef"
# Everything written in East Asian scripts: the above, radicals, kana, bopomofo, Hangul, and the
# ideographs of extension B and later (outside the Basic Multilingual Plane).
EAST_ASIAN = (
    CJK_IDEOGRAPHS
    + CJK_PUNCTUATION
    + "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\uac00-\ud7af\U00020000-\U0003134f"
)
