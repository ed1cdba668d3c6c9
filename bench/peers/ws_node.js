// Node.js `ws`: the README's "Server broadcast" example ("to all connected
// WebSocket clients, excluding itself"): a message from one client (the
// publisher, on /pub) is sent to every other open client.
//
//   node ws_node.js --port 8765
'use strict';
const { WebSocketServer, WebSocket } = require('ws');

const i = process.argv.indexOf('--port');
const port = i >= 0 ? Number(process.argv[i + 1]) : 8765;

const wss = new WebSocketServer({ host: '127.0.0.1', port });

wss.on('connection', function connection(ws) {
  ws.on('error', console.error);

  ws.on('message', function message(data, isBinary) {
    wss.clients.forEach(function each(client) {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});

wss.on('listening', () => console.error(`ws listening on 127.0.0.1:${port}`));
