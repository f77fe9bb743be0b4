from agentrl.rewards import exact_match, f1_score, math_equal, normalize_answer


def test_math_equal_numbers_and_latex():
    assert math_equal("7006652", "7006652")
    assert math_equal("7,006,652", "7006652")
    assert not math_equal("7006653", "7006652")
    assert math_equal(r"\frac{1}{2}", "0.5")
    assert math_equal(r"\sqrt{4}", "2")
    assert not math_equal(None, "1") and not math_equal("", "1")


def test_math_equal_survives_garbage_and_huge_input():
    assert not math_equal("}}}{{\\frac", "1")
    assert not math_equal("9" * 100_000, "1")


def test_squad_normalisation_em_f1():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the eiffel tower", ["Eiffel Tower", "x"]) == 1.0
    assert exact_match(None, ["x"]) == 0.0
    assert abs(f1_score("eiffel tower paris", ["Eiffel Tower"]) - 0.8) < 1e-9
    assert f1_score("nothing", ["Eiffel Tower"]) == 0.0
