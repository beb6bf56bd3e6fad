<?php

declare(strict_types=1);

namespace Polybus\Laravel;

use Closure;
use InvalidArgumentException;
use Polybus\Broker;
use Polybus\MessageBrokerInterface;

/**
 * Builds the broker a driver name selects from the `messaging` configuration. Applications
 * replace one driver with {@see extend()}, e.g. in a service provider's `boot()`:
 *
 *     $this->app->make(BrokerFactory::class)->extend('kafka', fn (array $config) => new MyBroker($config));
 */
final class BrokerFactory
{
    /** The drivers this package knows. */
    public const DRIVERS = ['redis', 'kafka', 'rabbitmq', 'memory', 'null'];

    /** @var array<string, Closure(array<string, mixed>): MessageBrokerInterface> */
    private array $custom = [];

    /**
     * @param array<string, mixed> $config the `messaging` configuration
     */
    public function __construct(private readonly array $config)
    {
    }

    /**
     * Replaces (or adds) the broker built for `$driver`; the callable receives the driver's
     * connection settings plus `redis_mode` and `timeout`.
     *
     * @param callable(array<string, mixed>): MessageBrokerInterface $factory
     */
    public function extend(string $driver, callable $factory): void
    {
        $this->custom[strtolower($driver)] = Closure::fromCallable($factory);
    }

    /**
     * The broker for `$driver`, or for the configured driver when null.
     *
     * @throws InvalidArgumentException for an unknown driver
     * @throws \Polybus\Exception\PolybusException when the broker cannot be created
     */
    public function make(?string $driver = null): MessageBrokerInterface
    {
        $driver = strtolower((string) ($driver ?? $this->config['driver'] ?? 'null'));
        $settings = $this->settings($driver);
        if (isset($this->custom[$driver])) {
            return ($this->custom[$driver])($settings);
        }
        if (!in_array($driver, self::DRIVERS, true)) {
            throw new InvalidArgumentException(sprintf(
                'Unknown messaging driver "%s"; expected one of %s.',
                $driver,
                implode(', ', self::DRIVERS),
            ));
        }
        if ($driver === 'null') {
            return new NullMessageBroker();
        }

        return new Broker(['driver' => $driver] + $settings);
    }

    /**
     * The extension's configuration array for `$driver`: a URL, when one is set, wins over
     * the separate settings; empty values are left out so the extension's defaults apply.
     *
     * @return array<string, mixed>
     */
    public function settings(string $driver): array
    {
        $connection = (array) ($this->config['connections'][$driver] ?? []);
        $url = $connection['url'] ?? null;
        if (is_string($url) && $url !== '') {
            $connection = array_intersect_key($connection, ['url' => true, 'options' => true]);
        } else {
            unset($connection['url']);
        }
        if ($driver === 'redis' && !isset($connection['redis_mode']) && !empty($this->config['redis_mode'])) {
            $connection['redis_mode'] = $this->config['redis_mode'];
        }
        if (isset($this->config['timeout']) && $this->config['timeout'] !== '') {
            $connection['timeout'] = (float) $this->config['timeout'];
        }
        $failover = (array) ($this->config['failover'] ?? []);
        if (($failover['spool_dir'] ?? '') !== '' && !in_array($driver, ['memory', 'null'], true)) {
            $failover['spool_dir'] = rtrim((string) $failover['spool_dir'], '/') . '/' . $driver;
            $connection['failover'] = array_filter($failover, static fn ($value): bool => $value !== null && $value !== '');
        }

        return array_filter($connection, static fn ($value): bool => $value !== null && $value !== '');
    }
}
