<?php
// Send one message with PHPMailer (WordPress's mail library), as tests/test_interop_phpmailer.py
// asks through the environment:
//   RELAY_HOST, RELAY_PORT, RELAY_SECURE (starttls|smtps), RELAY_AUTHTYPE (PLAIN|LOGIN),
//   RELAY_USER, RELAY_PASSWORD, RELAY_CA (PEM file), RELAY_PEER_NAME (name to verify),
//   MAIL_FROM, MAIL_TO, MAIL_BCC, MAIL_SUBJECT, MAIL_BODY
// Prints the SMTP dialogue (client and server lines) to stderr. Exit 0 when the relay
// accepted the message, 1 otherwise.

use PHPMailer\PHPMailer\Exception;
use PHPMailer\PHPMailer\PHPMailer;
use PHPMailer\PHPMailer\SMTP;

require '/usr/share/php/libphp-phpmailer/autoload.php';

function env(string $name): string
{
    $value = getenv($name);
    if ($value === false) {
        fwrite(STDERR, "missing environment variable $name\n");
        exit(2);
    }
    return $value;
}

$mail = new PHPMailer(true);
try {
    $mail->isSMTP();
    $mail->Host = env('RELAY_HOST');
    $mail->Port = (int) env('RELAY_PORT');
    $mail->SMTPSecure = env('RELAY_SECURE') === 'smtps'
        ? PHPMailer::ENCRYPTION_SMTPS : PHPMailer::ENCRYPTION_STARTTLS;
    $mail->SMTPAuth = true;
    $mail->AuthType = env('RELAY_AUTHTYPE');
    $mail->Username = env('RELAY_USER');
    $mail->Password = env('RELAY_PASSWORD');
    $mail->SMTPOptions = ['ssl' => [
        'cafile' => env('RELAY_CA'),
        'verify_peer' => true,
        'verify_peer_name' => true,
        'peer_name' => env('RELAY_PEER_NAME'),
        'allow_self_signed' => false,
    ]];
    $mail->Timeout = 10;
    $mail->Hostname = 'phpmailer.test';
    $mail->SMTPDebug = SMTP::DEBUG_SERVER;
    $mail->Debugoutput = function ($line, $level) {
        fwrite(STDERR, rtrim($line) . "\n");
    };

    $mail->setFrom(env('MAIL_FROM'), 'PHPMailer Sender');
    $mail->addAddress(env('MAIL_TO'));
    $mail->addBCC(env('MAIL_BCC'));
    $mail->Subject = env('MAIL_SUBJECT');
    $mail->Body = env('MAIL_BODY');
    $mail->send();
    echo "sent\n";
} catch (Exception $e) {
    fwrite(STDERR, 'PHPMailer error: ' . $mail->ErrorInfo . "\n");
    exit(1);
}
