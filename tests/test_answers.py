from ttc_nodes.answers import extract_answer, group_answers, is_correct, reference_answer, same_answer


def test_extracts_the_last_boxed_answer_with_nested_braces():
    assert extract_answer(r"first \boxed{1} then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"


def test_extracts_gsm8k_final_line():
    assert extract_answer("She pays 3*4=<<3*4=12>>12.\n#### 1,234") == "1,234"


def test_text_without_final_answer_has_none():
    assert extract_answer("I think it is 42") is None
    assert extract_answer(r"\boxed{unclosed") is None
    assert extract_answer(r"\boxed{}") is None


def test_equivalent_forms_are_the_same_answer():
    assert same_answer("0.5", r"\frac{1}{2}")
    assert same_answer("1,234", "1234")
    assert same_answer("x+1", "1+x")
    assert same_answer(r"\sqrt{4}", "2")


def test_different_values_are_not_the_same_answer():
    assert not same_answer("12", "13")
    assert not same_answer(r"\frac{1}{3}", "0.3")


def test_grading_reads_gsm8k_references_and_missing_answers():
    assert reference_answer("work...\n#### 72") == "72"
    assert is_correct("72", "work...\n#### 72") is True
    assert is_correct(None, "72") is False
    assert is_correct("72", None) is None


def test_grouping_puts_equal_answers_together_in_first_seen_order():
    assert group_answers(["2", "3", None, "2.0", r"\frac{4}{2}", "3"]) == [0, 1, None, 0, 0, 1]


def test_grading_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda pair: same_answer(*pair), [(r"\frac{3}{6}", "0.5"), ("7", "8")])) == [
            True,
            False,
        ]
