"""Words in seven scripts, a Chinese charset of 3,755 characters and the fonts that draw them, for the tests."""
import unicodedata
from typing import Dict, List

from strhub.tools import typefaces

SCRIPT_WORDS: Dict[str, List[str]] = {
    "Han": "中国 北京 上海 银行 医院 学校 出口 饭店 超市 地铁".split(),
    "Hangul": "서울 은행 병원 학교 출구 시장 약국 우체국".split(),
    "Arabic": "مرحبا سوق مطعم بنك شارع مدرسة مستشفى مخرج".split(),
    "Devanagari": "नमस्ते भारत दिल्ली बाज़ार होटल स्कूल अस्पताल दुकान".split(),  # conjuncts, vowel signs, a nukta
    "Cyrillic": "москва улица аптека магазин банк выход вход кафе".split(),
    "Greek": "αθήνα οδός φαρμακείο ταβέρνα έξοδος είσοδος καφές τράπεζα".split(),
    "Vietnamese": "phở đường chợ trường nước tiệm bánh quán".split(),
}
WORDS = [word for words in SCRIPT_WORDS.values() for word in words]
# strhub's own fonts: DejaVu draws Arabic, Cyrillic, Greek and Vietnamese, WenQuanYi Han and Hangul, Lohit Devanagari.
FONTS = ("DejaVuSans.ttf", "wqy-microhei-subset.ttf", "Lohit-Devanagari.ttf")


def gb2312_level1() -> str:
    """The 3,755 most common Chinese characters: level 1 of GB 2312 (rows 16-55)."""
    return "".join(bytes([row, cell]).decode("gb2312") for row in range(0xB0, 0xD8) for cell in range(0xA1, 0xFF)
                   if (row, cell) < (0xD7, 0xFA))


def multiscript_charset() -> str:
    """Digits, the level-1 Chinese characters, then every other character of the words: 3,888 characters."""
    return "".join(dict.fromkeys("0123456789" + gb2312_level1() + "".join(WORDS)))


def script_of(char: str) -> str:
    """The script named at the start of the character's Unicode name (`Han` for ideographs)."""
    first = unicodedata.name(char).split()[0]
    return {"CJK": "Han", "LATIN": "Vietnamese"}.get(first, first.title())


def script_fonts() -> List[str]:
    """The font files of FONTS, from the fonts that come with strhub (not the machine's, which vary)."""
    return [str(typefaces.PACKAGED_FONTS / name) for name in FONTS]
