<?php
// The PHP side of the Python <-> PHP interop tests.
//   php interop.php publish URL TOPIC COUNT        -> prints one message id per line
//   php interop.php consume URL TOPIC GROUP COUNT  -> prints one JSON line per message
declare(strict_types=1);

[$script, $mode, $url, $topic] = array_slice($argv, 0, 4);
$broker = new Polybus\Broker($url);
if ($mode === 'publish') {
    $count = (int) $argv[4];
    for ($n = 0; $n < $count; $n++) {
        $id = $broker->publishMessage($topic, ['n' => $n, 'from' => 'php'], ['key' => "k$n", 'headers' => ['lang' => 'php']]);
        echo $id, "\n";
    }
    $broker->flush();
    exit(0);
}
if ($mode === 'consume') {
    [$group, $count] = [$argv[4], (int) $argv[5]];
    $handled = $broker->consume($topic, function (Polybus\Message $m): void {
        echo json_encode([
            'id' => $m->id(),
            'topic' => $m->topic(),
            'key' => $m->key(),
            'payload' => $m->payload(),
            'headers' => $m->headers(),
        ]), "\n";
    }, $count, 60.0, ['group' => $group]);
    exit($handled === $count ? 0 : 3);
}
fwrite(STDERR, "unknown mode $mode\n");
exit(2);
