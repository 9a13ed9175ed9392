# Sourced by the bench scripts: start_nginx_floor PORT starts one nginx
# worker on 127.0.0.1:PORT answering every request with a constant body
# (`ok`, a 10200 beat answer, an empty list) and sets FLOOR_MASTER and
# FLOOR_PID (the worker, whose CPU time is measured).
start_nginx_floor() {
  local port=$1 dir
  dir=$(mktemp -d)
  cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  server {
    listen 127.0.0.1:$port;
    location /nacos/v1/ns/instance/beat { return 200 '{"clientBeatInterval":5000,"code":10200,"lightBeatEnabled":true}'; }
    location /nacos/v1/ns/instance/list { return 200 '{"hosts":[]}'; }
    location / { return 200 'ok'; }
  }
}
CONF
  nginx -c "$dir/nginx.conf" -p "$dir" &
  FLOOR_MASTER=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  FLOOR_PID=$(pgrep -P "$FLOOR_MASTER" | head -1)
}
