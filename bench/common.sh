# Shell helpers the bench scripts share (sourced, not run).

# listening PORT [PID]: true once 127.0.0.1:PORT accepts (waits up to 15 s,
# or until PID, when given, has exited).
listening() {
  local i
  for i in $(seq 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    [ -z "${2:-}" ] || kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
