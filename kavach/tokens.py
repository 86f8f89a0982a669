# INTERIM (not committed)
def estimate_input_tokens(
    provider, model, *, messages=None, prompt=None, system=None, tools=None
) -> int:
    n = 3
    for m in messages or []:
        n += 4 + len(str(m.get("content", ""))) // 3
    if prompt:
        n += len(prompt) // 3
    return n
