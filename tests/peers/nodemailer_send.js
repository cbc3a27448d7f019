// Send one message with nodemailer, as tests/test_interop_nodemailer.py asks: the options
// come as one JSON argument:
//   {host, port, secure, requireTLS, servername, user, pass, ca (PEM file),
//    from, to, bcc, subject, text}
// Prints nodemailer's result as JSON on stdout (exit 0), or the error on stderr (exit 1).
'use strict';

const fs = require('fs');
const nodemailer = require('nodemailer');

async function main() {
  const o = JSON.parse(process.argv[2]);
  const transport = nodemailer.createTransport({
    host: o.host,
    port: o.port,
    secure: o.secure,          // true: TLS from the first byte (465)
    requireTLS: o.requireTLS,  // true: STARTTLS or fail (587)
    name: 'nodemailer.test',
    auth: { user: o.user, pass: o.pass },
    tls: { ca: fs.readFileSync(o.ca), servername: o.servername, rejectUnauthorized: true },
    connectionTimeout: 10000,
    greetingTimeout: 10000,
    socketTimeout: 10000,
  });
  try {
    const info = await transport.sendMail({
      from: o.from, to: o.to, bcc: o.bcc, subject: o.subject, text: o.text,
    });
    process.stdout.write(JSON.stringify({
      messageId: info.messageId, envelope: info.envelope, accepted: info.accepted,
      rejected: info.rejected, response: info.response,
    }) + '\n');
  } finally {
    transport.close();
  }
}

main().catch((err) => {
  process.stderr.write(`nodemailer error: ${err.code || ''} ${err.message}\n`);
  process.exit(1);
});
