"""The tools of the tests, a module per job; the tests themselves are test_transcripts.py.

    changes.py     servers changed on purpose: the machine around them, or a mistake
    harness.py     the server as a process (ServerProcess), and its clients (Client)
    transcript.py  the transcript format; replay and record (`make record`)
    model.py       the protocol as a pure function, and the sessions hypothesis generates
    load.py        clients that load a server: a flood, paced readers, a chat room, a crowd
    hostile.py     make check's hostile cases: any server under load, measured from outside
    check.py       `make check`: any server, judged on the wire (a program: --help)
    readme.py      whether the READMEs and docs/ are true
    bench.py       `make bench`: this server beside others, measured (a program: --help)
    windows_requirements.py  the lines of requirements-dev.txt for a Windows CPython
                   (a script that `make test-windows` runs)

Dependencies point one way: the tests use these; these use the server (select_server.py),
never the tests; and each module here only those listed above it (changes.py, bench.py and
windows_requirements.py need nothing of the others, so a changed server or a benchmark
starts fast).
"""
