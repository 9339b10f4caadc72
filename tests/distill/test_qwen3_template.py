"""Qwen3's published chat template: every stage renders it with thinking off, so the teacher,
the student and answering see the token layout a real `--model Qwen3-*` folder gives."""

from transformers import AutoTokenizer

from tsubasa_fast.chat import chat_prompt_ids
from tsubasa_fast.distill.data import encode
from tsubasa_fast.distill.prompts import SYSTEM, student_messages, teacher_messages

THINK, END_THINK, IM_START, IM_END, NL2 = 151667, 151668, 151644, 151645, 271  # Qwen3's ids


def test_prompts_end_with_an_empty_thinking_block(tiny_qwen3):
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    messages = student_messages(["On 2 March 2024 Maya moved to Bristol."], "Where does Maya live now?")
    text = tok.decode(chat_prompt_ids(tok, messages))
    want = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            "<|im_start|>user\nMemories:\n- On 2 March 2024 Maya moved to Bristol.\n\n"
            "Question: Where does Maya live now?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert text == want
    # the template's default (thinking on) would leave the block open for the model to fill
    thinking = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert thinking.endswith("<|im_start|>assistant\n") and "<think>" not in thinking


def test_teacher_and_student_rows_are_the_answer_tokens_after_the_thinking_block(tiny_qwen3):
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    answer = tok.encode("Bristol", add_special_tokens=False)
    for messages in (teacher_messages("Maya moved to Bristol.", "Where does Maya live?"),
                     student_messages(["Maya moved to Bristol."], "Where does Maya live?")):
        seq = encode(tok, messages, "Bristol")
        ids = seq.input_ids
        # ... <|im_start|> assistant \n <think> \n\n </think> \n\n | Bristol <|im_end|>
        assert ids[seq.answer_start - 4: seq.answer_start] == [THINK, NL2, END_THINK, NL2]
        assert ids[seq.answer_start:] == answer + [IM_END]
        assert seq.answer_len == len(answer) + 1
        # the rows whose hidden state predicts the answer: from the last token of the block on
        rows = range(len(ids))[seq.target_rows]
        assert [ids[r + 1] for r in rows] == answer + [IM_END]
        assert ids.count(IM_START) == 3


def test_a_prompt_cut_to_max_length_keeps_its_end_and_counts_the_cut(tiny_qwen3):
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    messages = student_messages(["Maya moved to Bristol."] * 20, "Where does Maya live?")
    full = chat_prompt_ids(tok, messages)
    answer = tok.encode("Bristol", add_special_tokens=False) + [IM_END]
    assert encode(tok, messages, "Bristol").truncated == 0
    seq = encode(tok, messages, "Bristol", max_length=40)
    assert len(seq.input_ids) == 40 and seq.truncated == len(full) - (40 - len(answer))
    assert seq.input_ids == full[-(40 - len(answer)):] + answer  # question and header survive
