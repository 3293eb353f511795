"""The one assertion every validation test makes: the error names the op and
the argument, and says what was expected and what was given."""
import pytest

from dsport.core.errors import ValidationError


def check_named_error(call, op: str, arg: str, fragment: str) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        call()
    assert (e.value.op, e.value.arg) == (op, arg)
    msg = str(e.value)
    assert msg.startswith(f"{op}: argument '{arg}': expected") and fragment in msg and "got" in msg
    return e.value
