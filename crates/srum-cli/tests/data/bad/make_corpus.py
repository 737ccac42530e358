#!/usr/bin/env python3
"""Writes the hostile-input corpus in this folder: one folder per case with `case.json`
(the `srum` command to run, the exit status expected and the phrases its message must hold)
and the files it reads. Standard library only; rerun after editing, commit the output.

Placeholders in `args`: {case} this case's folder, {tmp} a fresh temporary folder, {model}
the shipped reference model (assets/tiny-umm), {good} the folder `good/` of valid inputs.
"""
import json, os, shutil, struct, zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def png(width, height, channels=3, pixel=(255, 0, 0)):
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + bytes(pixel[:channels]) * width for _ in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def record(image="00000.png", prompt="a red square", score=0.5, regions=None, **extra):
    r = {"bad_image_file": image, "good_image_file": image, "prompt": prompt,
         "image_size": [32, 32],
         "vlm_rewards": [{"object": "global_layout_reward", "bbox": [0, 0, 32, 32],
                          "score": score}] + (regions or [])}
    r.update(extra)
    return json.dumps(r)


def write(case, name, data):
    path = os.path.join(HERE, case, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


CASES = []


def case(name, args, exit, phrases, files=None, links=None, note=""):
    shutil.rmtree(os.path.join(HERE, name), ignore_errors=True)
    os.makedirs(os.path.join(HERE, name))
    for k, v in (files or {}).items():
        write(name, k, v)
    for k, target in (links or {}).items():
        path = os.path.join(HERE, name, k)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(target, path)
    write(name, "case.json", json.dumps(
        {"note": note, "args": args, "exit": exit, "phrases": phrases}, indent=1) + "\n")


def train(records="{case}/records.jsonl", images="{good}/images", extra=()):
    return ["train", "--checkpoint", "{model}", "--records", records, "--images", images,
            "--out", "{tmp}/run", "--steps", "1", "--batch", "1", *extra]


# Valid inputs the cases point at.
shutil.rmtree(os.path.join(HERE, "good"), ignore_errors=True)
write("good", "images/00000.png", png(32, 32))
write("good", "records.jsonl", record() + "\n")
write("good", "prompts.txt", "a red square\n")

good = record()
case("records_malformed_json", train(), "ok", ["records.jsonl:2:", "records.jsonl:3:", "2 training items, 2 skipped"],
     {"records.jsonl": good + "\n{\"bad_image_file\": \"00000.png\", \"prompt\": \n"
      "not json at all\n" + good + "\n"},
     note="broken lines are named and skipped; the good ones train")
case("records_wrong_types", train(), "ok", ["records.jsonl:1: field `prompt`", "records.jsonl:2: field `vlm_rewards`",
                                             "records.jsonl:3: field `image_size`"],
     {"records.jsonl": record(prompt=5) + "\n"
      + record(vlm_rewards="many") .replace('"vlm_rewards": [', '"ignored": [', 1) + "\n"
      + record(image_size="big") + "\n" + good + "\n"})
case("records_missing_fields", train(), "ok", ["records.jsonl:1: missing field `bad_image_file`",
                                                "records.jsonl:2: missing field `prompt`"],
     {"records.jsonl": json.dumps({"prompt": "a red square", "vlm_rewards": []}) + "\n"
      + json.dumps({"bad_image_file": "00000.png", "vlm_rewards": []}) + "\n" + good + "\n"})
case("records_bad_scores", train(), "ok", ["records.jsonl:1: invalid JSON", "1 without score",
                                              "1 clamped into [-1, 1], 1 non-finite dropped"],
     {"records.jsonl": good.replace("0.5", "NaN") + "\n" + good.replace("0.5", "\"high\"")
      + "\n" + record(score=1e300) + "\n" + record(score=-7) + "\n" + good + "\n"},
     note="NaN is not JSON (named line); a string score drops its region; 1e300 overflows f32 and is dropped, -7 is clamped; all counted")
bad_boxes = [[1, 2, 3], [20, 20, 10, 10], [-5, -5, -1, -1], [40, 40, 50, 50], [5, 5, 5, 9],
             ["a", 1, 2, 3], [0, 0, 1e300, 1e300], None]
case("records_bad_boxes", train(), "ok", ["3 with a bad bbox", "4 boxes empty or outside the image"],
     {"records.jsonl": record(regions=[{"object": "x", "bbox": b, "score": 0.5}
                                       for b in bad_boxes]) + "\n"},
     note="every bad box is dropped or clipped and counted; the global score still trains")
case("records_only_bad", train(), "fail", ["no usable record (3 skipped)", "records.jsonl:1:"],
     {"records.jsonl": "nope\n{}\n[1, 2]\n"})
case("records_empty", train(), "fail", ["no usable record (0 skipped)"], {"records.jsonl": ""})
case("path_dotdot", train(), "fail", ["records.jsonl:1:", "`../../../../etc/passwd` leaves its folder"],
     {"records.jsonl": record(image="../../../../etc/passwd") + "\n"})
case("path_absolute", train(), "fail", ["records.jsonl:1:", "`/etc/passwd` leaves its folder"],
     {"records.jsonl": record(image="/etc/passwd") + "\n"})
case("path_symlink", train(images="{case}/images"), "fail", ["records.jsonl:1:", "`link.png` is a link leaving its folder"],
     {"records.jsonl": record(image="link.png") + "\n"}, links={"images/link.png": "/etc/hostname"})
case("image_missing", train(), "fail", ["records.jsonl:1:", "missing.png"],
     {"records.jsonl": record(image="missing.png") + "\n"})
full = png(32, 32)
case("image_truncated", train(images="{case}/images"), "fail", ["records.jsonl:1:", "cut.png"],
     {"records.jsonl": record(image="cut.png") + "\n", "images/cut.png": full[: len(full) // 2]})
case("image_not_png", train(images="{case}/images"), "fail", ["records.jsonl:1:", "text.png"],
     {"records.jsonl": record(image="text.png") + "\n", "images/text.png": "hello\n"})
case("image_wrong_size", train(images="{case}/images"), "fail", ["records.jsonl:1:", "small.png: 16x16 image, expected 32x32"],
     {"records.jsonl": record(image="small.png").replace("[32, 32]", "[16, 16]") + "\n",
      "images/small.png": png(16, 16)})
case("image_gray", train(images="{case}/images"), "fail", ["records.jsonl:1:", "gray.png: L8 image with 1 channel(s)"],
     {"records.jsonl": record(image="gray.png") + "\n", "images/gray.png": png(32, 32, 1)})
gen = lambda prompts: ["generate", "--checkpoint", "{model}", "--prompts", prompts, "--out",
                       "{tmp}/gen", "--steps", "1"]
case("prompt_unknown_word", gen("{case}/prompts.txt"), "fail", ["prompts.txt:2:", "word `purple` is not in the vocabulary"],
     {"prompts.txt": "a red square\na purple circle\n"})
case("prompt_absurd_length", gen("{case}/prompts.txt"), "fail", ["prompts.txt:1:", "the model reads at most"],
     {"prompts.txt": " ".join(["a red square and"] * 2000) + " a red square\n"})
case("prompts_empty", gen("{case}/prompts.txt"), "fail", ["no prompts"], {"prompts.txt": ""})
case("config_negative_lr", train("{good}/records.jsonl", extra=["--config", "{case}/c.json"]),
     "fail", ["c.json: invalid config field `lr`: must be > 0, got -1"],
     {"c.json": json.dumps({"lr": -1.0})})
case("config_unknown_field", train("{good}/records.jsonl", extra=["--config", "{case}/c.json"]),
     "fail", ["c.json", "unknown field `learning_rate`"], {"c.json": json.dumps({"learning_rate": 0.1})})
case("config_zero_steps", train("{good}/records.jsonl")[:-4] + ["--steps", "0"], "fail",
     ["--steps, --batch and --save-every must be at least 1"])
case("config_lambda_nan", train("{good}/records.jsonl", extra=["--lambda", "NaN"]), "fail",
     ["invalid config field `lambda`: must be finite and >= 0, got NaN"])
case("config_not_json", train("{good}/records.jsonl", extra=["--config", "{case}/c.json"]),
     "fail", ["c.json: expected value at line 1 column 1"], {"c.json": "lr = 0.1\n"})

# Checkpoints: a model folder with the shipped tokenizer and a broken part.
MODEL = os.path.join(HERE, "..", "..", "..", "assets", "tiny-umm")


def model_case(name, phrases, card=None, weights=None, note=""):
    files = {}
    with open(os.path.join(MODEL, "tokenizer.json")) as f:
        files["model/tokenizer.json"] = f.read()
    with open(os.path.join(MODEL, "model.json")) as f:
        files["model/model.json"] = card(f.read()) if card else f.read()
    with open(os.path.join(MODEL, "model.safetensors"), "rb") as f:
        files["model/model.safetensors"] = weights(f.read()) if weights else f.read()
    case(name, ["generate", "--checkpoint", "{case}/model", "--prompts", "{good}/prompts.txt",
                "--out", "{tmp}/gen", "--steps", "1"], "fail", phrases, files, note=note)


def other_width(card):
    c = json.loads(card)
    c["config"]["d_model"] = c["config"]["d_model"] // 2
    c["config"]["d_ff"] = c["config"]["d_ff"] // 2
    return json.dumps(c)


model_case("checkpoint_other_config", ["tensor `blocks.2.text_up.weight`: checkpoint shape [64, 128], model shape [32, 64]"], card=other_width,
           note="weights of one size, card of another: each mismatched tensor is named")
model_case("safetensors_truncated_header", ["model.safetensors: not a safetensors file: header too small"], weights=lambda b: b[:5])
model_case("safetensors_oversized_header", ["model.safetensors: not a safetensors file: header too large"],
           weights=lambda b: struct.pack("<Q", 1 << 60) + b[8:],
           note="a header length of 2^60 must be refused before anything is allocated")
model_case("safetensors_garbage_header", ["model.safetensors: not a safetensors file: invalid JSON in header"],
           weights=lambda b: struct.pack("<Q", 64) + b"{" * 64 + b[8:])
model_case("safetensors_truncated_data", ["model.safetensors: not a safetensors file: incomplete metadata"],
           weights=lambda b: b[: len(b) - 1000])
model_case("model_json_broken", ["model.json: not a model card"], card=lambda c: c[: len(c) // 2])

conv = ["convert", "--in", "{case}/scores.jsonl", "--out", "{tmp}/train.jsonl"]
case("convert_mixed", conv, "ok", ["scores.jsonl:2:", "scores.jsonl:3: field `image_file`"],
     {"scores.jsonl": json.dumps({"image_file": "a.png", "prompt": "p", "vlm_rewards": []})
      + "\n{oops\n" + json.dumps({"image_file": 3, "prompt": "p"}) + "\n"})
case("convert_empty", conv, "fail", ["0 records written"], {"scores.jsonl": "\n\n"})
print("wrote", len([d for d in os.listdir(HERE) if os.path.isdir(os.path.join(HERE, d))]), "folders")
