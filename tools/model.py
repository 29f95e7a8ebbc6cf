"""The protocol as a pure function, and the sessions hypothesis generates from it.

model() is README.md's description of the two modes: given what up to five clients do, it
returns the transcript lines they cause. predict() asks it about a transcript in
transcripts/, or says in one line why it cannot; sessions() draws valid sessions for
make test, make fuzz and make check, which generated_transcript() writes out.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from select_server import describe
from tools.transcript import Step, Transcript, TranscriptError, parse

LEAVES = ("half-closes", "closes", "resets")


@dataclass(frozen=True)
class Action:
    """One thing a client does; at_once: right after its previous action (a send), without
    waiting for what that one caused."""

    actor: str
    verb: str  # "connects", "sends", "sends-urgent", "half-closes", "closes" or "resets"
    data: bytes = b""
    at_once: bool = False


class Unpredictable(Exception):
    """What the server does next depends on the kernel's timing, not on the protocol."""


def model(mode: str, actions: list[Action]) -> list[str]:
    """The protocol as a pure function: the transcript lines of these actions, each followed
    by what it makes clients receive and the server print. ack: each chunk earns its sender
    b'ACK'; broadcast: it reaches every other client online. Urgent data is an ordinary
    chunk. A client that half-closes gets what it is owed, then EOF; each leaving client is
    logged once, with why."""
    online: list[str] = []
    lines: list[str] = []
    caused: list[str] = []  # what the current run of at-once actions causes, not yet written
    for previous, action in zip([None, *actions], actions):
        if not action.at_once:
            lines += caused
            caused = []
        who = action.actor
        lines.append(f"{who} {action.verb}" + (f" {action.data!r}" if action.data else ""))
        if action.verb == "connects":
            online.append(who)
            caused.append(f"server: {{{who}}} connected ({len(online)} online)")
        elif action.verb in ("sends", "sends-urgent"):
            receivers = [who] if mode == "ack" else [other for other in online if other != who]
            reply = b"ACK" if mode == "ack" else action.data
            caused += [f"{receiver} receives {reply!r}" for receiver in receivers]
            caused.append(f"server: {{{who}}} sent {describe(action.data)}")
        else:  # it leaves
            if just_sent(previous, action):
                unpredictable_leave(mode, action)
            online.remove(who)
            if action.verb == "half-closes":
                caused.append(f"{who} receives EOF")
            reason = "connection reset" if action.verb == "resets" else "closed by client"
            caused.append(f"server: {{{who}}} disconnected: {reason}")
    return lines + caused


def just_sent(previous: Action | None, action: Action) -> bool:
    """True where action comes at once after a send of the same client's."""
    if previous is None or previous.actor != action.actor:
        return False
    return action.at_once and previous.verb in ("sends", "sends-urgent")


def unpredictable_leave(mode: str, action: Action) -> None:
    """Raise Unpredictable for a client that leaves at once after its send, where what
    follows depends on the kernel: an ACK owed to a socket closed at once may be answered
    with a reset, and a reset may overtake what was sent before it."""
    if action.verb == "resets":
        raise Unpredictable(
            f"{action.actor} resets at once after a send: the reset may "
            "overtake the bytes sent before it"
        )
    if mode == "ack" and action.verb == "closes":
        raise Unpredictable(
            f"{action.actor}'s ACK is owed to a socket it closed at once: the "
            "kernel may answer it with a reset, which the server may read "
            "before the EOF"
        )


def actions_of(transcript: Transcript) -> list[Action]:
    """A transcript's actions; each one right after another is at once."""
    steps = transcript.steps
    actions = []
    for previous, step in zip([None, *steps], steps):
        if step.is_action:
            at_once = previous is not None and previous.is_action
            actions.append(Action(step.actor, step.verb, step.data, at_once))
    return actions


def predict(transcript: Transcript) -> list[Step]:
    """The steps the model predicts from a transcript's actions; Unpredictable, naming the
    file, where it cannot say."""
    try:
        lines = model(transcript.mode, actions_of(transcript))
        return parse(f"mode {transcript.mode}\n" + "\n".join(lines), transcript.name).steps
    except (Unpredictable, TranscriptError) as why:
        raise Unpredictable(f"{transcript.name}: {why}") from None


def canonical(steps: list[Step]) -> list[str]:
    """The step lines, what follows each action sorted by channel (clients, then the server):
    channels may interleave in any order, but within one the order is kept (a stable sort)."""
    keyed = []
    actions_so_far = 0
    for step in steps:
        actions_so_far += step.is_action
        channel = (not step.is_action, step.actor == "server", step.actor)
        keyed.append(((actions_so_far, *channel), step.text))
    return [text for _, text in sorted(keyed, key=lambda pair: pair[0])]


# ---------------------------------------------------------------- generated sessions


@st.composite
def sessions(
    draw: st.DrawFn, modes: tuple[str, ...] = ("ack", "broadcast")
) -> tuple[str, list[Action]]:
    """A mode and up to 16 actions of up to five clients, each valid where it stands, and
    each session one that the model can predict."""
    mode = draw(st.sampled_from(modes))
    newcomers = ["alice", "bob", "carol", "dave", "erin"]  # in the order they connect
    online: list[str] = []
    actions: list[Action] = []
    for _ in range(draw(st.integers(1, 16))):
        verbs = ["connects"] if newcomers else []
        if online:
            verbs += ["sends", "sends", "sends", *LEAVES]
        if not verbs:
            break  # all five have come and gone
        verb = draw(st.sampled_from(verbs))
        if verb == "connects":
            online.append(newcomers.pop(0))
            actions.append(Action(online[-1], verb))
            continue
        who = draw(st.sampled_from(online))
        if verb == "sends":
            actions.append(Action(who, verb, draw(st.binary(min_size=1, max_size=48))))
            continue
        online.remove(who)
        just_sent = actions[-1].actor == who and actions[-1].verb == "sends"
        # Closing right after a send only stays deterministic where no reply is owed to
        # the closed socket (see model()).
        may_hurry = verb == "half-closes" or (verb == "closes" and mode == "broadcast")
        at_once = just_sent and may_hurry and draw(st.booleans())
        actions.append(Action(who, verb, at_once=at_once))
    return mode, actions


def generated_transcript(mode: str, actions: list[Action], found_by: str) -> str:
    """A generated session in the transcript format, ready to save under transcripts/."""
    header = [f"# Found by {found_by}.", f"mode {mode}", ""]
    return "\n".join(header + model(mode, actions)) + "\n"
