import socket

from vsr_core.netutil import free_port


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_free_port_prefers_the_given_port_and_falls_back_when_it_is_taken():
    port = free_port()
    assert port > 0 and bindable(port)
    assert free_port(port) == port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        other = free_port(port)
        assert other != port and bindable(other)
