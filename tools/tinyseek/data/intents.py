"""The built-in task: smart-home voice commands in English and Chinese, from a grammar.

Every sample is a paraphrase template with its slots filled (rooms, lights, degrees, durations,
music...), optional politeness/filler around it, then ASR-like noise. The split is by
template: for every intent and language a seeded ~25% of the templates make only test samples
and another seeded share (task.val_fraction) only validation samples, so the test score
measures phrasings the student never saw, and validation predicts it.
Dataset card: docs/datasets.md.
"""
from __future__ import annotations

import random
import re

import numpy as np

from .dataset import DataError, Dataset, Split

INTENTS = [
    "lights_on", "lights_off", "set_temperature", "set_brightness", "play_music", "stop_music",
    "volume_up", "volume_down", "open_curtains", "close_curtains", "lock_door", "ask_time",
    "ask_weather", "set_timer", "out_of_domain",
]
LANGUAGES = ("en", "zh")
TEST_TEMPLATE_FRACTION = 0.25

# Slots: {p} polite/filler prefix of a command, {s} its suffix, {h} a filler before a statement,
# {q} a filler before a question; the rest are content slots (see SLOTS).
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "en": {
        "lights_on": [
            "{p}turn on the {light}{s}", "{p}turn the {room} {light} on{s}",
            "{p}switch on the {light} in the {room}{s}", "{h}lights on in the {room}",
            "{h}it's too dark in here", "{p}put the {light} on{s}",
            "{q}can we get some light in the {room}", "{p}light up the {room}{s}",
            "{h}i need the {light} on", "{h}{room} {light} on", "{p}power on the {room} {light}{s}",
            "{h}i can't see anything, turn the {light} on", "{p}flip the {light} on in the {room}{s}",
        ],
        "lights_off": [
            "{p}turn off the {light}{s}", "{p}turn the {room} {light} off{s}",
            "{p}switch off the {light} in the {room}{s}", "{h}lights off", "{p}kill the {light}{s}",
            "{p}shut off the {room} {light}{s}", "{h}i'm going to bed, turn off the {light}",
            "{h}the {light} in the {room} can go off now", "{p}put the {light} out{s}",
            "{h}{room} {light} off", "{p}power down the {light} in the {room}{s}",
            "{h}it's too bright, switch the {light} off", "{h}i don't need the {room} {light} anymore",
        ],
        "set_temperature": [
            "{p}set the temperature to {deg}{s}", "{p}set the thermostat to {tnum}{s}",
            "{p}make it {deg} in the {room}{s}", "{h}i want the {room} at {deg}",
            "{p}change the heating to {deg}{s}", "{p}turn the heat up to {deg}{s}",
            "{p}cool the {room} down to {deg}{s}", "{h}temperature {deg}",
            "{p}adjust the thermostat in the {room} to {deg}{s}",
            "{h}it's freezing, warm the house up to {deg}",
            "{p}bring the {room} temperature down to {deg}{s}", "{p}put the air conditioning on {deg}{s}",
            "{q}can you keep the {room} at {deg}",
        ],
        "set_brightness": [
            "{p}set the brightness to {pct}{s}", "{p}dim the {light} to {pct}{s}",
            "{p}set the {room} {light} to {pct}{s}", "{h}brightness {pct}",
            "{p}make the {light} a bit dimmer{s}", "{p}turn the brightness down to {pct}{s}",
            "{p}brighten the {room} {light} to {pct}{s}", "{h}i want the {light} at {pct} brightness",
            "{p}lower the {light} in the {room} to {pct}{s}", "{p}change the {light} brightness to {pct}{s}",
            "{h}the {light} is too bright, take it down to {pct}",
            "{p}raise the brightness in the {room} to {pct}{s}", "{p}dim the {room} {light} a little{s}",
        ],
        "play_music": [
            "{p}play some {genre}{s}", "{p}play {artist}{s}", "{p}put on some {genre} music{s}",
            "{h}i want to listen to {artist}", "{p}start playing {genre} in the {room}{s}",
            "{h}some music in the {room} please", "{p}play my {genre} playlist{s}",
            "{h}let's hear some {genre}", "{p}shuffle songs by {artist}{s}", "{h}i'm in the mood for {genre}",
            "{p}put {artist} on in the {room}{s}", "{p}start the music{s}",
            "{p}play the latest album by {artist}{s}",
        ],
        "stop_music": [
            "{p}stop the music{s}", "{p}pause the song{s}", "{h}stop playing", "{p}turn the music off{s}",
            "{h}enough music for now", "{p}stop playing {artist}{s}", "{h}pause the music in the {room}",
            "{h}i don't want to hear this song anymore", "{p}shut the music off in the {room}{s}",
            "{p}end the playlist{s}", "{p}kill the music{s}", "{h}no more {genre} please",
            "{p}stop this {genre}{s}",
        ],
        "volume_up": [
            "{p}turn the volume up{s}", "{p}turn it up{s}", "{h}a bit louder{s}", "{p}increase the volume{s}",
            "{h}i can't hear the music", "{p}raise the volume to {pct}{s}",
            "{p}make it louder in the {room}{s}", "{h}volume up", "{p}pump up the volume{s}",
            "{q}can you crank it up a bit", "{p}turn the {room} speaker up{s}", "{h}the music is too quiet",
            "{p}boost the sound{s}",
        ],
        "volume_down": [
            "{p}turn the volume down{s}", "{p}turn it down{s}", "{h}a bit quieter{s}", "{p}lower the volume{s}",
            "{h}it's too loud", "{p}decrease the volume to {pct}{s}", "{p}make it quieter in the {room}{s}",
            "{h}volume down", "{p}reduce the volume a little{s}", "{h}the music is way too loud",
            "{p}turn the {room} speaker down{s}", "{h}keep it down, the baby is sleeping",
            "{p}soften the sound{s}",
        ],
        "open_curtains": [
            "{p}open the {curt}{s}", "{p}open the {room} {curt}{s}", "{p}pull the {curt} open{s}",
            "{h}let some sunlight in", "{p}raise the {curt} in the {room}{s}", "{h}{curt} up",
            "{p}draw back the {curt}{s}", "{h}i want to see outside, open the {curt}",
            "{p}roll up the {curt}{s}", "{h}open up the {curt} in the {room}", "{p}part the {curt}{s}",
            "{q}can the {curt} in the {room} be opened", "{p}lift the {room} {curt} all the way{s}",
        ],
        "close_curtains": [
            "{p}close the {curt}{s}", "{p}close the {room} {curt}{s}", "{p}draw the {curt}{s}",
            "{h}block out the sun", "{p}lower the {curt} in the {room}{s}", "{h}{curt} down",
            "{p}pull the {curt} shut{s}", "{h}people can see inside, close the {curt}",
            "{p}roll down the {curt}{s}", "{h}shut the {curt} in the {room}",
            "{p}draw the {room} {curt} closed{s}", "{h}it's too sunny in the {room}, close the {curt}",
            "{p}let the {curt} down{s}",
        ],
        "lock_door": [
            "{p}lock the {door}{s}", "{p}lock up the house{s}", "{p}make sure the {door} is locked{s}",
            "{h}lock everything up", "{p}secure the {door}{s}", "{h}{door}, lock it",
            "{h}i'm leaving, lock the {door}", "{p}bolt the {door}{s}", "{p}lock all the doors{s}",
            "{h}don't forget to lock the {door}", "{p}engage the lock on the {door}{s}",
            "{h}time for bed, lock up", "{p}double lock the {door}{s}",
        ],
        "ask_time": [
            "{q}what time is it", "{q}what's the time", "{p}tell me the time{s}",
            "{q}do you know what time it is", "{q}what time is it right now", "{h}current time",
            "{q}how late is it", "{q}is it {hour} yet", "{q}what's the time in {city}",
            "{p}check the time{s}", "{q}what hour is it", "{p}give me the time{s}", "{h}time check",
        ],
        "ask_weather": [
            "{q}what's the weather like {day}", "{q}what's the weather in {city}", "{q}will it rain {day}",
            "{q}how hot will it be {day}", "{q}do i need an umbrella {day}", "{h}weather forecast for {city}",
            "{q}is it going to snow in {city} {day}", "{q}how cold is it outside", "{p}tell me the forecast{s}",
            "{q}what's the temperature outside in {city}", "{q}is it sunny in {city} {day}",
            "{q}should i wear a jacket {day}", "{p}give me the weather for {day}{s}",
        ],
        "set_timer": [
            "{p}set a timer for {dur}{s}", "{p}start a timer for {dur}{s}", "{h}timer {dur}",
            "{p}remind me in {dur}{s}", "{p}count down {dur}{s}", "{h}wake me up in {dur}",
            "{p}set an alarm for {dur} from now{s}", "{h}i need a timer for {dur}",
            "{p}time {dur} for the {food}{s}", "{h}tell me when {dur} is up",
            "{p}put a timer on for {dur}{s}", "{h}set a timer, the {food} will be ready in {dur}",
            "{p}start counting down from {dur}{s}",
        ],
        "out_of_domain": [
            "{h}tell me a joke", "{q}how are you doing today", "{q}who won the football game last night",
            "{q}how far is {city} from here", "{h}i bought a new lamp for the {room} yesterday",
            "{h}my neighbor plays {genre} all night", "{q}what's your favorite color", "{p}order a pizza{s}",
            "{p}call {name}{s}", "{q}how do you spell restaurant",
            "{h}the weather was lovely in {city} last year", "{h}i left my keys by the {door}",
            "{p}add milk to the shopping list{s}", "{q}what's {n} times {n}", "{p}recommend a good movie{s}",
            "{h}i love the {curt} you picked for the {room}", "{p}send a message to {name}{s}",
            "{h}thanks, that's all", "{q}how old is {artist}", "{h}the time we spent in {city} was amazing",
            "{p}book a table for two{s}", "{h}i'm so bored",
        ],
    },
    "zh": {
        "lights_on": [
            "{p}打开{room}的{light}{s}", "{p}把{light}打开{s}", "{p}开一下{room}的{light}{s}", "{h}{room}开灯",
            "{h}太暗了，开个灯{s}", "{p}把{room}的{light}开开{s}", "{h}我要开{light}", "{p}让{room}亮起来{s}",
            "{h}{light}打开", "{p}开启{room}{light}{s}", "{h}看不清了，把{light}开一下",
            "{p}点亮{room}的{light}{s}", "{h}{room}的{light}帮我开一下",
        ],
        "lights_off": [
            "{p}关掉{room}的{light}{s}", "{p}把{light}关了{s}", "{p}关一下{room}的{light}{s}", "{h}{room}关灯",
            "{h}我要睡觉了，关灯{s}", "{p}把{room}的{light}关掉{s}", "{h}{light}不用开了",
            "{p}熄灭{room}的{light}{s}", "{h}{light}关上", "{p}关闭{room}{light}{s}",
            "{h}太亮了，把{light}关了吧", "{h}熄灯", "{h}{room}的{light}帮我关一下",
        ],
        "set_temperature": [
            "{p}把温度调到{deg}{s}", "{p}把空调设成{deg}{s}", "{p}{room}温度调到{deg}{s}", "{h}温度{deg}",
            "{p}把暖气调到{deg}{s}", "{h}好冷啊，把温度调高到{deg}", "{p}把{room}的温度降到{deg}{s}",
            "{h}我想让{room}保持在{deg}", "{p}空调开到{deg}{s}", "{p}将恒温器设为{deg}{s}",
            "{h}太热了，温度调低到{deg}", "{p}把{room}空调温度改成{deg}{s}", "{p}设定室温{deg}{s}",
        ],
        "set_brightness": [
            "{p}把亮度调到{pct}{s}", "{p}把{light}调暗一点{s}", "{p}{room}的{light}亮度调到{pct}{s}",
            "{h}亮度{pct}", "{p}把{light}调亮一点{s}", "{p}把{room}的灯光调到{pct}{s}",
            "{h}{light}太亮了，调到{pct}", "{p}亮度降到{pct}{s}", "{p}将{room}{light}的亮度设为{pct}{s}",
            "{h}灯光暗一些", "{p}亮度调高到{pct}{s}", "{h}{light}有点暗，调亮些", "{p}把{light}亮度改成{pct}{s}",
        ],
        "play_music": [
            "{p}播放{genre}{s}", "{p}放一首{artist}的歌{s}", "{h}来点{genre}", "{h}我想听{artist}的歌",
            "{p}在{room}放点{genre}{s}", "{h}放首歌听听", "{p}播放我收藏的{genre}歌单{s}",
            "{p}随机播放{artist}的歌{s}", "{h}有点无聊，放点{genre}吧", "{p}放{artist}的新专辑{s}",
            "{h}音乐走起", "{p}打开音乐{s}", "{h}我想听点{genre}",
        ],
        "stop_music": [
            "{p}停止播放{s}", "{p}把音乐停了{s}", "{h}暂停一下音乐", "{p}关掉音乐{s}", "{h}别放了",
            "{h}不想听{artist}了，停了吧", "{p}暂停这首歌{s}", "{h}音乐先停一下", "{p}把{room}的音乐关了{s}",
            "{h}这首{genre}不好听，停掉", "{p}停一下歌{s}", "{h}安静一下，别放歌了", "{p}结束播放{s}",
        ],
        "volume_up": [
            "{p}把音量调大{s}", "{h}大声点", "{p}声音调高一点{s}", "{h}音量加大", "{h}听不清楚，声音大一点",
            "{p}音量提高到{pct}{s}", "{p}把{room}的音箱声音开大{s}", "{h}再大声一点", "{p}增大音量{s}",
            "{h}声音太小了", "{p}音量加两格{s}", "{h}开大点声", "{p}调高音量{s}",
        ],
        "volume_down": [
            "{p}把音量调小{s}", "{h}小声点", "{p}声音调低一点{s}", "{h}音量减小", "{h}太吵了，声音小一点",
            "{p}音量降到{pct}{s}", "{p}把{room}的音箱声音关小{s}", "{h}再小声一点", "{p}减小音量{s}",
            "{h}声音太大了", "{p}音量减两格{s}", "{h}宝宝在睡觉，声音小点", "{p}调低音量{s}",
        ],
        "open_curtains": [
            "{p}打开{curt}{s}", "{p}把{room}的{curt}拉开{s}", "{h}拉开{curt}", "{h}让阳光照进来",
            "{p}把{curt}升起来{s}", "{h}{room}{curt}打开", "{p}拉开{room}的{curt}{s}",
            "{h}我想看看外面，把{curt}打开", "{p}开{curt}{s}", "{h}天亮了，{curt}拉开吧",
            "{p}把{curt}全部打开{s}", "{h}开一下{room}的{curt}", "{p}{curt}拉起来{s}",
        ],
        "close_curtains": [
            "{p}关上{curt}{s}", "{p}把{room}的{curt}拉上{s}", "{h}拉上{curt}", "{h}太晒了，挡一下太阳",
            "{p}把{curt}放下来{s}", "{h}{room}{curt}关上", "{p}合上{room}的{curt}{s}",
            "{h}外面能看到里面，把{curt}拉上", "{p}关{curt}{s}", "{h}天黑了，{curt}拉上吧",
            "{p}把{curt}全部关上{s}", "{h}关一下{room}的{curt}", "{p}{curt}放下{s}",
        ],
        "lock_door": [
            "{p}锁上{door}{s}", "{p}把{door}锁好{s}", "{h}锁门", "{h}我出门了，把{door}锁上",
            "{p}确认一下{door}锁上了{s}", "{h}{door}上锁", "{p}把所有的门都锁上{s}", "{h}睡觉前锁好{door}",
            "{p}反锁{door}{s}", "{h}别忘了锁{door}", "{p}给{door}上个锁{s}", "{h}要出门了，锁一下门",
            "{p}锁一下{door}{s}",
        ],
        "ask_time": [
            "{q}现在几点了", "{q}几点了", "{q}现在是什么时间", "{h}告诉我现在几点", "{q}现在几点钟",
            "{q}到{hour}了吗", "{p}报一下时间{s}", "{q}现在时间是多少", "{q}{city}现在几点",
            "{q}你知道现在几点吗", "{h}看一下时间", "{q}现在是几点几分", "{q}已经几点了",
        ],
        "ask_weather": [
            "{q}{day}天气怎么样", "{q}{city}的天气怎么样", "{q}{day}会下雨吗", "{q}{day}热不热",
            "{q}{day}出门要带伞吗", "{q}{city}{day}的天气预报", "{q}{city}{day}会下雪吗", "{q}外面冷不冷",
            "{p}播报一下天气预报{s}", "{q}{city}现在多少度", "{q}{day}是晴天吗", "{q}{day}要不要穿外套",
            "{p}查一下{day}的天气{s}",
        ],
        "set_timer": [
            "{p}设一个{dur}的计时器{s}", "{p}定时{dur}{s}", "{h}计时{dur}", "{p}{dur}后提醒我{s}",
            "{p}倒计时{dur}{s}", "{h}{dur}以后叫我", "{p}设个{dur}后的闹钟{s}", "{h}我需要一个{dur}的定时器",
            "{h}{food}要煮{dur}，帮我计个时", "{h}{dur}之后告诉我", "{p}开始{dur}倒计时{s}",
            "{h}帮我掐个{dur}的表", "{p}把计时器设成{dur}{s}",
        ],
        "out_of_domain": [
            "{h}给我讲个笑话", "{q}你今天过得怎么样", "{q}昨晚的球赛谁赢了", "{q}{city}离这里有多远",
            "{h}我昨天给{room}买了一盏新台灯", "{h}我邻居整晚都在放{genre}", "{q}你最喜欢什么颜色",
            "{p}点一份外卖{s}", "{p}给{name}打个电话{s}", "{q}{artist}今年多大了", "{h}去年{city}的天气特别好",
            "{h}我把钥匙落在{door}旁边了", "{p}把牛奶加到购物清单里{s}", "{q}{n}加{n}等于几",
            "{p}推荐一部好看的电影{s}", "{h}你挑的{room}{curt}真好看", "{p}给{name}发个微信{s}",
            "{h}谢谢，没事了", "{h}我好无聊啊", "{h}我们在{city}玩得真开心", "{p}订一张去{city}的机票{s}",
            "{q}地球为什么是圆的",
        ],
    },
}

# Every template once, (language, intent, template); a sample's `groups` entry indexes this.
TEMPLATE_TABLE: list[tuple[str, str, str]] = [
    (lang, intent, t) for lang in LANGUAGES for intent in INTENTS for t in TEMPLATES[lang][intent]
]
_TEMPLATE_ID = {key: i for i, key in enumerate(TEMPLATE_TABLE)}

# -- numbers ------------------------------------------------------------------------------
_EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ZH_DIGITS = "零一二三四五六七八九"


def en_number(n: int) -> str:
    if n < 20:
        return _EN_ONES[n]
    if n < 100:
        return _EN_TENS[n // 10] + ("" if n % 10 == 0 else " " + _EN_ONES[n % 10])
    return "one hundred"


def zh_number(n: int, liang: bool = False) -> str:
    """Chinese numeral for 0..100; `liang`: 2 as 两 (before a measure word, 两分钟)."""
    if n == 2 and liang:
        return "两"
    if n < 10:
        return _ZH_DIGITS[n]
    if n < 20:
        return "十" + (_ZH_DIGITS[n % 10] if n % 10 else "")
    if n < 100:
        return _ZH_DIGITS[n // 10] + "十" + (_ZH_DIGITS[n % 10] if n % 10 else "")
    return "一百"


def _pick(rng: random.Random, weighted: list[tuple]) -> tuple:
    return rng.choices(weighted, weights=[w[-1] for w in weighted])[0]


def _en_num(rng: random.Random, n: int) -> str:
    # ASR transcripts write numbers either way; the student tokenizer maps every digit run to one id.
    return str(n) if rng.random() < 0.55 else en_number(n)


def _zh_num(rng: random.Random, n: int, liang: bool = False) -> str:
    return str(n) if rng.random() < 0.35 else zh_number(n, liang)


_PCTS = (5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 100)


def _en_deg(rng):
    n = rng.randint(16, 30)
    return f"{_en_num(rng, n)} degrees" + (" celsius" if rng.random() < 0.1 else "")


def _en_pct(rng):
    n = rng.choice(_PCTS)
    return f"{n}%" if rng.random() < 0.15 else f"{_en_num(rng, n)} percent"


def _en_dur(rng):
    kind = rng.random()
    if kind < 0.6:
        n = rng.choice((1, 2, 3, 4, 5, 8, 10, 12, 15, 20, 25, 30, 40, 45, 50, 90))
        return f"{_en_num(rng, n)} minute" + ("s" if n > 1 else "")
    if kind < 0.8:
        return f"{_en_num(rng, rng.choice((10, 15, 20, 30, 45, 90)))} seconds"
    return rng.choice(("an hour", "half an hour", "an hour and a half", "two hours", "three hours", "1 hour"))


def _en_hour(rng):
    if rng.random() < 0.25:
        return rng.choice(("noon", "midnight", "lunchtime"))
    n = rng.randint(1, 12)
    return rng.choice((f"{en_number(n)} o'clock", f"{n} pm", f"{n} am", f"{en_number(n)} thirty"))


def _zh_deg(rng):
    n = rng.randint(16, 30)
    return f"{_zh_num(rng, n)}" + ("摄氏度" if rng.random() < 0.1 else "度")


def _zh_pct(rng):
    r = rng.random()
    if r < 0.05:
        return "一半"
    n = rng.choice(_PCTS)
    return f"{n}%" if r < 0.3 else f"百分之{zh_number(n)}"


def _zh_dur(rng):
    kind = rng.random()
    if kind < 0.6:
        n = rng.choice((1, 2, 3, 4, 5, 8, 10, 12, 15, 20, 25, 30, 40, 45, 50, 90))
        return f"{_zh_num(rng, n, liang=True)}分钟"
    if kind < 0.8:
        return f"{_zh_num(rng, rng.choice((10, 15, 20, 30, 45, 90)))}秒"
    return rng.choice(("半小时", "半个小时", "一个小时", "两个小时", "一个半小时", "三个小时"))


def _zh_hour(rng):
    if rng.random() < 0.2:
        return rng.choice(("中午", "半夜十二点", "饭点"))
    n = rng.randint(1, 12)
    return rng.choice(("", "早上", "下午", "晚上")) + zh_number(n, liang=True) + rng.choice(("点", "点", "点半"))


SLOTS: dict[str, dict[str, object]] = {
    "en": {
        "room": ["living room", "kitchen", "bedroom", "bathroom", "hallway", "office", "dining room",
                 "kids room", "guest room", "study", "garage", "basement"],
        "light": ["light", "lights", "lamp", "ceiling light", "desk lamp", "floor lamp", "lamps", "reading light"],
        "curt": ["curtains", "blinds", "drapes", "shades", "window blinds"],
        "door": ["front door", "back door", "side door", "garage door", "door", "main door", "patio door"],
        "genre": ["jazz", "rock", "classical", "pop", "lo-fi", "hip hop", "country", "blues", "reggae",
                  "folk", "metal", "disco", "soul", "funk"],
        "artist": ["taylor swift", "the beatles", "adele", "coldplay", "queen", "jay chou", "mozart", "bts",
                   "ed sheeran", "beyonce"],
        "city": ["london", "paris", "tokyo", "new york", "berlin", "beijing", "shanghai", "sydney", "seattle",
                 "chicago", "toronto", "madrid"],
        "day": ["today", "tomorrow", "tonight", "this weekend", "this afternoon", "on saturday",
                "tomorrow morning", "later"],
        "food": ["pasta", "eggs", "rice", "pizza", "tea", "bread", "cookies", "soup"],
        "name": ["mom", "dad", "anna", "tom", "david", "grandma", "my boss", "lisa"],
        "deg": _en_deg,
        "tnum": lambda rng: _en_num(rng, rng.randint(16, 30)),
        "pct": _en_pct,
        "dur": _en_dur,
        "hour": _en_hour,
        "n": lambda rng: _en_num(rng, rng.randint(2, 12)),
    },
    "zh": {
        "room": ["客厅", "卧室", "厨房", "书房", "卫生间", "餐厅", "走廊", "阳台", "儿童房", "主卧", "次卧", "玄关"],
        "light": ["灯", "台灯", "吊灯", "顶灯", "床头灯", "灯光", "落地灯", "筒灯"],
        "curt": ["窗帘", "百叶窗", "遮光帘", "纱帘"],
        "door": ["门", "大门", "前门", "后门", "入户门", "车库门", "侧门"],
        "genre": ["爵士乐", "摇滚乐", "古典音乐", "流行音乐", "轻音乐", "民谣", "钢琴曲", "儿歌", "说唱", "老歌",
                  "粤语歌", "纯音乐"],
        "artist": ["周杰伦", "邓紫棋", "陈奕迅", "王菲", "林俊杰", "五月天", "薛之谦", "李荣浩", "张学友", "孙燕姿"],
        "city": ["北京", "上海", "广州", "深圳", "杭州", "成都", "西安", "武汉", "南京", "重庆"],
        "day": ["今天", "明天", "后天", "今晚", "这周末", "明天早上", "今天下午", "周六"],
        "food": ["鸡蛋", "面条", "饺子", "粥", "汤", "玉米"],
        "name": ["妈妈", "爸爸", "老王", "小李", "张经理", "奶奶", "老婆", "同事"],
        "deg": _zh_deg,
        "pct": _zh_pct,
        "dur": _zh_dur,
        "hour": _zh_hour,
        "n": lambda rng: _zh_num(rng, rng.randint(2, 12)),
    },
}

# Affixes: (text, suffix set, weight). A command prefix decides which suffixes fit after it
# ("could you ... please", but never "能不能 ... 吗").
_AFFIXES = {
    "en": {
        "p": [("", "cmd", 6), ("please ", "cmd", 2), ("could you ", "ask", 1.5), ("can you ", "ask", 1.5),
              ("would you ", "ask", 0.5), ("could you please ", "ask", 0.5), ("hey, ", "cmd", 1),
              ("hey assistant, ", "cmd", 0.5), ("um, ", "cmd", 0.7), ("ok ", "cmd", 0.5), ("uh ", "cmd", 0.5),
              ("i need you to ", "cmd", 0.4)],
        "h": [("", "cmd", 8), ("hey, ", "cmd", 1), ("um, ", "cmd", 0.7), ("ok ", "cmd", 0.5), ("uh, ", "cmd", 0.5),
              ("hey assistant, ", "cmd", 0.5), ("so ", "cmd", 0.4)],
        "q": [("", "cmd", 8), ("hey, ", "cmd", 1), ("um, ", "cmd", 0.7), ("ok ", "cmd", 0.5), ("uh, ", "cmd", 0.5),
              ("hey assistant, ", "cmd", 0.5), ("excuse me, ", "cmd", 0.5), ("quick question, ", "cmd", 0.4)],
        "s": {"cmd": [("", 8), (" please", 1.5), (" thanks", 1), (" now", 1), (" for me", 0.7),
                      (" right now", 0.5), (" thank you", 0.5)],
              "ask": [("", 6), (" please", 1.5), (" for me", 1)]},
    },
    "zh": {
        "p": [("", "cmd", 6), ("请", "cmd", 2), ("麻烦", "cmd", 1), ("帮我", "cmd", 2), ("麻烦你", "cmd", 0.7),
              ("麻烦帮我", "cmd", 0.5), ("能不能", "ask_nm", 1), ("可以帮我", "ask", 0.8), ("你能", "ask", 0.5),
              ("嗯，", "cmd", 0.6), ("那个，", "cmd", 0.5), ("小智，", "cmd", 0.7), ("你好，", "cmd", 0.4)],
        "h": [("", "cmd", 8), ("嗯，", "cmd", 1), ("那个，", "cmd", 0.7), ("小智，", "cmd", 0.8), ("哎，", "cmd", 0.5),
              ("你好，", "cmd", 0.4)],
        "q": [("", "cmd", 8), ("嗯，", "cmd", 1), ("那个，", "cmd", 0.7), ("小智，", "cmd", 0.8), ("请问", "cmd", 1.2),
              ("问一下，", "cmd", 0.5)],
        "s": {"cmd": [("", 8), ("吧", 1.2), ("，谢谢", 1), ("，好吗", 0.6), ("，谢谢啦", 0.4), ("哈", 0.3)],
              "ask": [("", 5), ("吗", 2), ("，谢谢", 1)],
              "ask_nm": [("", 5), ("，谢谢", 1)]},
    },
}

_SLOT_RE = re.compile(r"\{(\w+)\}")


def render(template: str, lang: str, rng: random.Random) -> list[str]:
    """A template with its slots filled, as pieces (literal text, slot values) whose joins are
    word boundaries. The suffix follows the prefix's kind and never repeats a word of it."""
    slots, affixes = SLOTS[lang], _AFFIXES[lang]
    out, pos, kind, prefix = [], 0, "cmd", ""
    for m in _SLOT_RE.finditer(template):
        out.append(template[pos:m.start()])
        pos = m.end()
        name = m.group(1)
        if name in ("p", "h", "q"):
            prefix, kind, _ = _pick(rng, affixes[name])
            out.append(prefix)
        elif name == "s":
            suffix = _pick(rng, affixes["s"][kind])[0]
            out.append("" if suffix.strip(" ，") and suffix.strip(" ，") in prefix else suffix)
        else:
            source = slots[name]
            out.append(source(rng) if callable(source) else rng.choice(source))
    out.append(template[pos:])
    return [piece for piece in out if piece]


# -- ASR-like noise -------------------------------------------------------------------------
# Probabilities per sample (documented in docs/datasets.md; change them there too).
EN_NOISE = {"homophone": 0.15, "char_edit": 0.30, "second_char_edit": 0.08, "join_words": 0.10, "filler": 0.05}
ZH_NOISE = {"drop_char": 0.12, "repeat_char": 0.12, "filler": 0.10, "homophone": 0.08}

EN_HOMOPHONES = {
    "to": ("two", "too"), "for": ("four",), "right": ("write",), "weather": ("whether",), "lights": ("lites",),
    "light": ("lite",), "hey": ("hay",), "off": ("of",), "there": ("their",), "know": ("no",), "hour": ("our",),
    "eight": ("ate",), "one": ("won",), "some": ("sum",), "new": ("knew",), "by": ("buy", "bye"), "be": ("bee",),
    "i": ("eye",), "in": ("inn",), "the": ("a", "da"), "it's": ("its",), "sun": ("son",), "so": ("sew",),
}
_ZH_HOMOPHONES = {"的": "得地", "在": "再", "那": "哪", "吗": "嘛", "一": "以", "点": "店", "度": "渡",
                  "调": "条", "帘": "连", "锁": "所", "计": "记", "开": "凯"}
_ZH_FILLERS = ("嗯", "呃", "那个", "就是")
_EN_FILLERS = ("uh", "um", "like")
_ZH_PUNCT = set("，。？！、")


def _char_edit(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word) - 1)
    op = rng.random()
    if op < 0.4:  # dropped letter
        return word[:i] + word[i + 1:]
    if op < 0.7:  # doubled letter
        return word[:i + 1] + word[i] + word[i + 1:]
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # swapped neighbours


def noise_en(pieces: list[str], rng: random.Random) -> str:
    words = "".join(pieces).split(" ")
    p = EN_NOISE
    if rng.random() < p["homophone"]:
        cands = [i for i, w in enumerate(words) if w in EN_HOMOPHONES]
        if cands:
            i = rng.choice(cands)
            words[i] = rng.choice(EN_HOMOPHONES[words[i]])
    for prob in (p["char_edit"], p["second_char_edit"]):
        if rng.random() < prob:
            cands = [i for i, w in enumerate(words) if len(w) >= 3 and w.isalpha()]
            if cands:
                i = rng.choice(cands)
                words[i] = _char_edit(words[i], rng)
    if rng.random() < p["filler"] and len(words) > 1:
        words.insert(rng.randrange(1, len(words)), rng.choice(_EN_FILLERS))
    if rng.random() < p["join_words"] and len(words) > 1:
        i = rng.randrange(len(words) - 1)
        words[i:i + 2] = [words[i].rstrip(",") + words[i + 1]]
    return " ".join(w for w in words if w)


def noise_zh(pieces: list[str], rng: random.Random) -> str:
    p = ZH_NOISE
    if rng.random() < p["filler"]:  # hesitations fall between words, not inside one
        at = rng.randrange(len(pieces))
        pieces = pieces[:at] + [rng.choice(_ZH_FILLERS)] + pieces[at:]
    chars = list("".join(pieces))
    positions = lambda: [i for i, c in enumerate(chars) if c not in _ZH_PUNCT]  # noqa: E731
    if rng.random() < p["homophone"]:
        cands = [i for i in positions() if chars[i] in _ZH_HOMOPHONES]
        if cands:
            i = rng.choice(cands)
            chars[i] = rng.choice(_ZH_HOMOPHONES[chars[i]])
    if rng.random() < p["drop_char"] and len(positions()) > 2:
        del chars[rng.choice(positions())]
    if rng.random() < p["repeat_char"]:
        i = rng.choice(positions())
        chars.insert(i, chars[i])
    return "".join(chars)


def _cycle(templates: list[int], n: int, rng: random.Random) -> list[int]:
    """n template indices that use every template equally often (+-1), in seeded order."""
    out: list[int] = []
    while len(out) < n:
        block = list(templates)
        rng.shuffle(block)
        out.extend(block)
    return out[:n]


MAX_NOVEL_FRACTION = 0.34


def _units(template: str, lang: str) -> set[str]:
    """The words (English) or characters (Chinese) of a template, slots and punctuation left out."""
    text = _SLOT_RE.sub(" ", template)
    if lang == "en":
        return set(re.findall(r"[a-z']+", text))
    return {c for c in text if "\u4e00" <= c <= "\u9fff"}


def _novel_fraction(template: str, others: list[str], lang: str) -> float:
    units = _units(template, lang)
    known = set().union(*(_units(t, lang) for t in others))
    return len(units - known) / max(1, len(units))


def held_out_templates(lang: str, intent: str, seed: int) -> list[int]:
    """Indices (into TEMPLATES[lang][intent]) of the templates reserved for the test split.

    A seeded ~25% of the templates, taken only where at most MAX_NOVEL_FRACTION of a held-out
    template's words (characters in Chinese) are missing from the intent's other templates:
    the test asks for new phrasings of known words, not for words no sample ever taught.
    """
    n = len(TEMPLATES[lang][intent])
    return _hold_out(lang, intent, list(range(n)), max(1, int(n * TEST_TEMPLATE_FRACTION + 0.5)),
                     f"tinyseek-intents-split:{seed}:{lang}:{intent}", [])


def validation_templates(lang: str, intent: str, seed: int, fraction: float) -> list[int]:
    """Indices of the templates reserved for the validation split: a seeded `fraction` of all
    templates (at least one when fraction > 0), chosen among those the test did not take, by the
    same rule, so validation is held out like the test. The test templates' words must stay
    known to what is left for training, so validation never makes the test harder."""
    n = len(TEMPLATES[lang][intent])
    if fraction <= 0:
        return []
    test = held_out_templates(lang, intent, seed)
    rest = [i for i in range(n) if i not in test]
    k = min(len(rest) - 1, max(1, int(n * fraction + 0.5)))
    return _hold_out(lang, intent, rest, k, f"tinyseek-intents-val:{seed}:{lang}:{intent}", test)


def _hold_out(lang: str, intent: str, pool: list[int], k: int, stream: str, fixed: list[int]) -> list[int]:
    """k templates of `pool` held out (seeded by `stream`): each at most MAX_NOVEL_FRACTION novel
    against the templates that remain for training; the already held-out `fixed` ones may not
    become more novel than MAX_NOVEL_FRACTION (or than they were) by it. Where too few qualify,
    the least novel of the rest complete the set."""
    templates = TEMPLATES[lang][intent]
    order = list(pool)
    random.Random(stream).shuffle(order)

    def novelty(held: list[int]) -> float:
        train = [templates[i] for i in pool if i not in held]
        return max(_novel_fraction(templates[i], train, lang) for i in held + fixed)

    limit = max(MAX_NOVEL_FRACTION, novelty([])) if fixed else MAX_NOVEL_FRACTION
    held: list[int] = []
    for i in order:
        if len(held) < k and novelty(held + [i]) <= limit:
            held.append(i)
    for i in order:  # too few qualify: complete with the least novel of the rest
        if len(held) >= k:
            break
        held.append(min((j for j in order if j not in held), key=lambda j: novelty(held + [j])))
    return sorted(held)


def generate(languages=LANGUAGES, samples_per_intent: int = 240, val_fraction: float = 0.15,
             seed: int = 0) -> Dataset:
    """The intents dataset; the same arguments always give the same samples in the same order.

    Three disjoint template sets per (language, intent): test (~25 %), validation (val_fraction
    of the templates) and training; samples in the same shares. Each (language, intent) and
    split has its own random stream, so the English samples do not change when Chinese is
    added, and the test samples do not change with the validation settings.
    """
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown or not languages:
        raise DataError(f"intents: languages must be chosen from {', '.join(LANGUAGES)} (got {list(languages)})")
    if not 0.0 <= val_fraction < 0.5:
        raise DataError(f"intents: task.val_fraction (the share of templates held out for validation) must be in "
                        f"[0, 0.5), got {val_fraction}")
    min_samples = 3 if val_fraction > 0 else 2
    if samples_per_intent < min_samples:
        raise DataError(f"intents: task.samples_per_intent must be at least {min_samples} (one train, "
                        f"{'one validation ' if val_fraction > 0 else ''}and one test sample), got {samples_per_intent}")
    parts: dict[str, list[tuple[str, int, int]]] = {"train": [], "val": [], "test": []}  # (text, label, group)
    # The same counts for every intent (not proportional to its templates): balanced splits.
    n_test = max(1, min(samples_per_intent - 2, int(samples_per_intent * TEST_TEMPLATE_FRACTION + 0.5)))
    n_val = 0 if val_fraction <= 0 else max(1, min(samples_per_intent - n_test - 1,
                                                   int(samples_per_intent * val_fraction + 0.5)))
    n_train = samples_per_intent - n_test - n_val
    for lang in languages:
        noise = noise_en if lang == "en" else noise_zh
        seen: set[str] = set()

        def draw(split: str, intent: str, y: int, ids: list[int], n: int, rng: random.Random, fresh: bool):
            templates = TEMPLATES[lang][intent]
            for t in _cycle(ids, n, rng):
                for _ in range(100 if fresh else 1):
                    text = noise(render(templates[t], lang, rng), rng)
                    if not fresh or text not in seen:
                        break
                else:
                    raise DataError(f"intents: template {templates[t]!r} ({lang}, {intent}) only renders texts "
                                    "that also occur in training; give it more slots or variety")
                parts[split].append((text, y, _TEMPLATE_ID[(lang, intent, templates[t])]))
                if split != "test":
                    seen.add(text)

        held = {intent: (held_out_templates(lang, intent, seed), validation_templates(lang, intent, seed, val_fraction))
                for intent in INTENTS}
        for y, intent in enumerate(INTENTS):
            test_ids, val_ids = held[intent]
            train_ids = [i for i in range(len(TEMPLATES[lang][intent])) if i not in test_ids + val_ids]
            draw("train", intent, y, train_ids, n_train, random.Random(f"tinyseek-intents:{seed}:{lang}:{intent}"), False)
        # Held-out samples come after every training sample of the language, so one whose text
        # equals a training text (noise can merge two phrasings) is drawn again.
        for split, stream in (("val", "tinyseek-intents-val"), ("test", "tinyseek-intents-test")):
            for y, intent in enumerate(INTENTS):
                test_ids, val_ids = held[intent]
                draw(split, intent, y, val_ids if split == "val" else test_ids, n_val if split == "val" else n_test,
                     random.Random(f"{stream}:{seed}:{lang}:{intent}"), True)
    order_rng = random.Random(f"tinyseek-intents-order:{seed}")
    splits = {}
    for name, samples in parts.items():
        order_rng.shuffle(samples)
        splits[name] = Split(
            y=np.array([s[1] for s in samples], dtype=np.int64),
            texts=[s[0] for s in samples],
            x=None,
            groups=np.array([s[2] for s in samples], dtype=np.int64),
        )
    return Dataset(name="intents", kind="text", labels=list(INTENTS), split_by="templates", **splits)
